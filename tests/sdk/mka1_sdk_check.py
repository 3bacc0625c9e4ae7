"""MKA1's published Python SDK (meetkai-mka1) against the live service.

API.md: "a client written against the MKA1 documentation must work against
this service unchanged", with both 0.12.0 and the latest release. This drives
every feedback operation the installed SDK has for both kinds through the SDK
itself and checks what it parses, including that every entry it parses
(create, update, get, batch, list items) has real timestamps equal to the ones
the raw API returns for the same entry, fetched with plain HTTP.

Both releases name the model attributes `created_at`/`updated_at`; 0.12.0
reads them from the wire keys `createdAt`/`updatedAt` (a pydantic alias),
releases since 0.12.22 from `created_at`/`updated_at`. The wire key is taken
from the installed models, not assumed.

Run by scripts/sdk_check.sh, once per SDK version, with the service's URL and
a key in LLM_FEEDBACK_URL and LLM_FEEDBACK_KEY.
"""

import json
import os
import sys
import urllib.parse
import urllib.request
import uuid
from datetime import datetime
from importlib.metadata import version

from mka1 import SDK
from mka1 import errors
from mka1 import models

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


def raw_get(path):
    """The JSON the API answers to `GET /api/v1/llm/feedback/{path}`, with plain HTTP."""
    request = urllib.request.Request(
        f"{URL}/api/v1/llm/feedback/{path}",
        headers={"Authorization": f"Bearer {KEY}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def raw_entry(kind, entry_id):
    """The entry as the API answers `GET /{kind}/{id}`."""
    return raw_get(f"{kind}/{urllib.parse.quote(entry_id, safe='')}")


def wire_timestamp(text):
    """An RFC 3339 timestamp with a `Z` as an aware datetime (Python < 3.11 too)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def timestamp_fields(model_class):
    """`(attribute, wire key)` of the created and updated timestamps of an SDK model class."""
    found = []
    for names in (("created_at", "createdAt"), ("updated_at", "updatedAt")):
        attribute = next((n for n in names if n in model_class.model_fields), None)
        if attribute is None:
            raise AttributeError(f"{model_class.__name__} has none of {names}")
        found.append((attribute, model_class.model_fields[attribute].alias or attribute))
    return found


def check_timestamps(parsed, raw, what):
    """The SDK parsed real timestamps, equal to the raw API's for the same entry."""
    try:
        fields = timestamp_fields(type(parsed))
    except AttributeError as err:
        check(False, f"{what}: {err}")
        return
    for attribute, wire_key in fields:
        value = getattr(parsed, attribute)
        if value is None:
            check(False, f"{what}: SDK parsed {attribute} (wire key {wire_key}) as None; raw entry {raw}")
            continue
        if wire_key not in raw:
            check(False, f"{what}: the raw entry has no {wire_key}: {raw}")
            continue
        expected = wire_timestamp(raw[wire_key])
        check(
            isinstance(value, datetime) and value.tzinfo is not None and value == expected,
            f"{what}: {attribute} {value} is {raw[wire_key]} (from {wire_key})",
        )


SDK_VERSION = version("meetkai-mka1")
print(f"meetkai-mka1 {SDK_VERSION}: entry timestamps read from "
      + ", ".join(key for _, key in timestamp_fields(models.GetFeedbackResponse)))
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
    check_timestamps(created, raw_entry(kind, first), f"{kind}: create")
    create(id=second, x_on_behalf_of="sdk-user")

    try:
        create(id=first)
        check(False, f"{kind}: a duplicate create raises")
    except errors.SDKDefaultError as err:
        check("Status 409" in str(err), f"{kind}: a duplicate create is 409")

    updated = update(id=first, rating="thumbs_down", description="Could be more detailed.")
    check(str(field(updated, "rating")).endswith("thumbs_down"), f"{kind}: update replaces the rating")
    check(field(updated, "description") == "Could be more detailed.", f"{kind}: update replaces the description")
    after_update = raw_entry(kind, first)
    check_timestamps(updated, after_update, f"{kind}: update")

    got = get(id=first)
    check(field(got, "id") == first and field(got, "description") == "Could be more detailed.", f"{kind}: get returns the updated entry")
    check_timestamps(got, after_update, f"{kind}: get")

    page = list_(limit=10)
    raw_items = {item["id"]: item for item in raw_get(f"{kind}?limit=10")["data"]}
    ids = [field(item, "id") for item in field(page, "data")]
    check(first in ids and second in ids, f"{kind}: list returns both entries")
    check(field(page, "has_more") is False, f"{kind}: list says there is no more")
    for item in field(page, "data"):
        check_timestamps(item, raw_items.get(field(item, "id"), {}), f"{kind}: list item {field(item, 'id')}")
    as_user = list_(limit=10, x_on_behalf_of="sdk-user")
    check([field(item, "id") for item in field(as_user, "data")] == [second], f"{kind}: list on behalf of an end user sees only theirs")

    results = field(batch(ids=[first, "sdk-missing", first]), "results")
    check(len(results) == 3, f"{kind}: batch get answers every id")
    check(field(results[0], "id") == first and field(results[2], "id") == first, f"{kind}: batch get keeps the order and repeats")
    check(str(getattr(results[1], "error", "")).endswith("not_found"), f"{kind}: batch get marks a missing id not_found")
    for index in (0, 2):
        check_timestamps(results[index], after_update, f"{kind}: batch get result {index}")

    try:
        get(id="sdk-missing")
        check(False, f"{kind}: get of a missing id raises")
    except errors.SDKDefaultError as err:
        check("Status 404" in str(err), f"{kind}: get of a missing id is 404")

# The admin export (start_export / get_export_status), where the installed
# release has it (0.12.128 does, 0.12.0 does not), with the admin key that
# sdk_check.sh created (`keys create --admin`).
ADMIN_KEY = os.environ.get("LLM_FEEDBACK_ADMIN_KEY")
# API.md follows 0.12.128's types; 0.12.0 typed exported_at as an integer.
RESULT_MODEL = getattr(models, "GetExportStatusResponseResult", None)
EXPORT_TYPES_MATCH = RESULT_MODEL is not None and \
    RESULT_MODEL.model_fields["exported_at"].annotation is datetime
if hasattr(feedback, "start_export") and not EXPORT_TYPES_MATCH:
    print(f"meetkai-mka1 {SDK_VERSION}: its export models differ from 0.12.128's "
          "(exported_at is not a datetime); the admin export is checked with 0.12.128")
elif hasattr(feedback, "start_export") and ADMIN_KEY:
    import time

    admin = SDK(bearer_auth=ADMIN_KEY, server_url=URL).llm.feedback
    try:
        feedback.start_export()
        check(False, "export: a tenant key may not start an export")
    except errors.SDKDefaultError as err:
        check("Status 403" in str(err), "export: a tenant key gets 403")
    started = admin.start_export()
    check(started.started is True and started.status == "RUNNING", f"export: start_export starts one ({started})")
    check(started.progress is not None and isinstance(started.progress.message, str), "export: start_export has its progress")
    deadline = time.monotonic() + 60
    status = admin.get_export_status()
    while status.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
        status = admin.get_export_status()
    check(status.status == "COMPLETED", f"export: get_export_status reaches COMPLETED ({status})")
    result = status.result
    check(result is not None, "export: a completed export has its result")
    if result is not None:
        check(result.record_count == result.completion_feedback_count + result.response_feedback_count
              and result.completion_feedback_count >= 2 and result.response_feedback_count >= 2,
              f"export: the counts add up ({result})")
        check(result.completions_file.endswith(".parquet") and result.responses_file.endswith(".parquet"),
              "export: two Parquet files")
        check(isinstance(result.exported_at, datetime) and result.exported_at.tzinfo is not None,
              "export: exported_at is a UTC datetime")
        check(isinstance(result.duration_ms, int), "export: duration_ms is an integer")
    check(isinstance(status.start_time, datetime) and isinstance(status.close_time, datetime),
          "export: start_time and close_time are datetimes")
elif hasattr(feedback, "start_export"):
    check(False, "export: LLM_FEEDBACK_ADMIN_KEY is not set")

if failures:
    print(f"meetkai-mka1 {SDK_VERSION}: {len(failures)} SDK checks failed", file=sys.stderr)
    sys.exit(1)
print(f"meetkai-mka1 {SDK_VERSION}: every SDK check passed")
