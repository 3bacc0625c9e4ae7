"""MKA1's published Python SDK (meetkai-mka1 0.12.0) against the live service.

API.md: "a client written against the MKA1 documentation must work against
this service unchanged". This drives every feedback operation that SDK has
for both kinds through the SDK itself and checks what it parses. Run by
scripts/sdk_check.sh with the service's URL and a key in LLM_FEEDBACK_URL and
LLM_FEEDBACK_KEY.
"""

import os
import sys
import uuid

from mka1 import SDK
from mka1 import errors

URL = os.environ["LLM_FEEDBACK_URL"]
KEY = os.environ["LLM_FEEDBACK_KEY"]
RUN = uuid.uuid4().hex[:8]
failures = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        failures.append(what)


def field(obj, *names):
    """A model attribute under either spelling the SDK may use."""
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    raise AttributeError(f"{type(obj).__name__} has none of {names}")


sdk = SDK(bearer_auth=KEY, server_url=URL)
feedback = sdk.llm.feedback

for kind in ("completions", "responses"):
    singular = "completion" if kind == "completions" else "response"
    create = getattr(feedback, f"create_{singular}_feedback")
    update = getattr(feedback, f"update_{singular}_feedback")
    get = getattr(feedback, f"get_{singular}_feedback")
    list_ = getattr(feedback, f"list_{singular}_feedback")
    batch = getattr(feedback, f"batch_get_{singular}_feedback")
    first, second = f"sdk-{RUN}-{kind}-1", f"sdk-{RUN}-{kind}-2"

    created = create(id=first, rating="thumbs_up", description="Very helpful response!")
    check(field(created, "id") == first, f"{kind}: create returns the entry")
    check(str(field(created, "rating")).endswith("thumbs_up"), f"{kind}: create returns the rating")
    create(id=second, x_on_behalf_of="sdk-user")

    try:
        create(id=first)
        check(False, f"{kind}: a duplicate create raises")
    except errors.SDKDefaultError as err:
        check("Status 409" in str(err), f"{kind}: a duplicate create is 409")

    updated = update(id=first, rating="thumbs_down", description="Could be more detailed.")
    check(str(field(updated, "rating")).endswith("thumbs_down"), f"{kind}: update replaces the rating")
    check(field(updated, "description") == "Could be more detailed.", f"{kind}: update replaces the description")

    got = get(id=first)
    check(field(got, "id") == first and field(got, "description") == "Could be more detailed.", f"{kind}: get returns the updated entry")

    page = list_(limit=10)
    ids = [field(item, "id") for item in field(page, "data")]
    check(first in ids and second in ids, f"{kind}: list returns both entries")
    check(field(page, "has_more") is False, f"{kind}: list says there is no more")
    as_user = list_(limit=10, x_on_behalf_of="sdk-user")
    check([field(item, "id") for item in field(as_user, "data")] == [second], f"{kind}: list on behalf of an end user sees only theirs")

    results = field(batch(ids=[first, "sdk-missing", first]), "results")
    check(len(results) == 3, f"{kind}: batch get answers every id")
    check(field(results[0], "id") == first and field(results[2], "id") == first, f"{kind}: batch get keeps the order and repeats")
    check(str(getattr(results[1], "error", "")).endswith("not_found"), f"{kind}: batch get marks a missing id not_found")

    try:
        get(id="sdk-missing")
        check(False, f"{kind}: get of a missing id raises")
    except errors.SDKDefaultError as err:
        check("Status 404" in str(err), f"{kind}: get of a missing id is 404")

if failures:
    print(f"{len(failures)} SDK checks failed", file=sys.stderr)
    sys.exit(1)
print("every SDK check passed")
