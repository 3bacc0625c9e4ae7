// Drives every operation of the live service through a TypeScript client:
// openapi-fetch over the types openapi-typescript generated from its
// /openapi.json (scripts/clients_check.sh). Typechecked with
// `tsc --noEmit --strict`, then compiled and run with node.
//
// Checks what a user of the generated client relies on: the shared Kind,
// Order and Rating types, X-On-Behalf-Of, the three states of a PUT field
// (absent, null, a value), the typed not-found branch of a batch get, the
// typed error envelope. Entries are read by the fields this driver needs,
// never by their exact key set: the service may add fields.
//
// Usage: LLM_FEEDBACK_URL=http://127.0.0.1:8080 LLM_FEEDBACK_KEY=lfk_... node driver.js

import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Feedback = components["schemas"]["Feedback"];
type BatchNotFound = components["schemas"]["BatchNotFound"];
type BatchResult = components["schemas"]["BatchResult"];
type ErrorResponse = components["schemas"]["ErrorResponse"];
type Kind = components["schemas"]["Kind"];
type Rating = components["schemas"]["Rating"];

const CSV_HEADER = "id,model,rating,description,user,created_at,updated_at";

function check(condition: boolean, message: string): asserts condition {
  if (!condition) {
    throw new Error(message);
  }
}

/** The typed body of a success with `status`; fails on anything else. */
function ok<T>(
  result: { data?: T; error?: unknown; response: Response },
  status: number,
  what: string,
): T {
  check(
    result.response.status === status && result.data !== undefined,
    `${what}: expected ${status}, got ${result.response.status} ${JSON.stringify(result.error)}`,
  );
  return result.data;
}

/** The `error.code` of an error answer with `status`. */
function errorCode(
  result: { error?: ErrorResponse; response: Response },
  status: number,
  what: string,
): string {
  check(
    result.response.status === status && result.error !== undefined,
    `${what}: expected a ${status} ErrorResponse, got ${result.response.status}`,
  );
  return result.error.error.code;
}

function isNotFound(result: BatchResult): result is BatchNotFound {
  return "error" in result;
}

const baseUrl = process.env.LLM_FEEDBACK_URL ?? "";
const key = process.env.LLM_FEEDBACK_KEY ?? "";
check(baseUrl !== "" && key !== "", "set LLM_FEEDBACK_URL and LLM_FEEDBACK_KEY");
const run = Math.random().toString(36).slice(2, 12);

const anonymous = createClient<paths>({ baseUrl });
const client = createClient<paths>({
  baseUrl,
  headers: { Authorization: `Bearer ${key}` },
});

async function operational(): Promise<void> {
  const health = ok(await anonymous.GET("/healthz", { parseAs: "text" }), 200, "healthz");
  check(health === "ok", `healthz: ${health}`);
  const ready = ok(await anonymous.GET("/readyz", { parseAs: "text" }), 200, "readyz");
  check(ready === "ready", `readyz: ${ready}`);
  const exposition = ok(await anonymous.GET("/metrics", { parseAs: "text" }), 200, "metrics");
  check(typeof exposition === "string", "metrics");
  const document = ok(await anonymous.GET("/openapi.json"), 200, "openapi.json");
  check(String(document["openapi"]).startsWith("3.1"), `openapi.json: ${document["openapi"]}`);
}

async function entries(kind: Kind): Promise<void> {
  const user = `user-${run}`;
  const otherUser = `other-${run}`;
  const first = `ts-${run}-${kind}-1`;
  const second = `ts-${run}-${kind}-2`;
  const missing = `ts-${run}-missing`;
  const collection = { params: { path: { kind } } };
  const asUser = { params: { path: { kind }, header: { "X-On-Behalf-Of": user } } };
  const entry = (id: string, onBehalfOf?: string) => ({
    params: {
      path: { kind, id },
      header: onBehalfOf === undefined ? {} : { "X-On-Behalf-Of": onBehalfOf },
    },
  });

  // create: every field, as an end user; then only an id (null means absent).
  const created: Feedback = ok(
    await client.POST("/api/v1/llm/feedback/{kind}", {
      ...asUser,
      body: { id: first, rating: "thumbs_down", description: "Could be more detailed.", model: "gpt-4o" },
    }),
    201,
    "create",
  );
  check(created.id === first && created.rating === "thumbs_down", `create: ${JSON.stringify(created)}`);
  check(created.description === "Could be more detailed." && created.model === "gpt-4o", "create: fields");
  check(created.createdAt === created.updatedAt, `create: timestamps ${JSON.stringify(created)}`);
  const bare = ok(
    await client.POST("/api/v1/llm/feedback/{kind}", { ...collection, body: { id: second, rating: null } }),
    201,
    "create with only an id",
  );
  check(bare.rating === undefined && bare.description === undefined, `bare: ${JSON.stringify(bare)}`);
  const conflict = errorCode(
    await client.POST("/api/v1/llm/feedback/{kind}", { ...asUser, body: { id: first } }),
    409,
    "second create",
  );
  check(conflict === "conflict", `second create: ${conflict}`);

  // get, scoped by X-On-Behalf-Of.
  const got = ok(await client.GET("/api/v1/llm/feedback/{kind}/{id}", entry(first, user)), 200, "get");
  check(got.id === first && got.createdAt === created.createdAt, `get: ${JSON.stringify(got)}`);
  const hidden = errorCode(
    await client.GET("/api/v1/llm/feedback/{kind}/{id}", entry(first, otherUser)),
    404,
    "get as another user",
  );
  check(hidden === "not_found", `get as another user: ${hidden}`);

  // update: absent leaves a field, null clears it, a value replaces it.
  const put = "/api/v1/llm/feedback/{kind}/{id}" as const;
  const unchanged = ok(await client.PUT(put, { ...entry(first, user), body: {} }), 200, "update {}");
  check(
    unchanged.rating === "thumbs_down" && unchanged.description === "Could be more detailed.",
    `absent fields changed: ${JSON.stringify(unchanged)}`,
  );
  check(unchanged.updatedAt >= created.updatedAt, "update {}: updatedAt");
  const cleared = ok(await client.PUT(put, { ...entry(first, user), body: { rating: null } }), 200, "rating null");
  check(cleared.rating === undefined, `null did not clear the rating: ${JSON.stringify(cleared)}`);
  check(cleared.description === "Could be more detailed.", "null rating touched the description");
  const thumbsUp: Rating = "thumbs_up";
  const replaced = ok(
    await client.PUT(put, { ...entry(first, user), body: { rating: thumbsUp, description: null } }),
    200,
    "rating value, description null",
  );
  check(replaced.rating === "thumbs_up" && replaced.description === undefined, `value/null: ${JSON.stringify(replaced)}`);
  const described = ok(
    await client.PUT(put, { ...entry(first, user), body: { description: "" } }),
    200,
    "description empty",
  );
  check(described.description === "" && described.rating === "thumbs_up", "empty description");
  const absent = errorCode(await client.PUT(put, { ...entry(missing), body: {} }), 404, "update of a missing entry");
  check(absent === "not_found", `update of a missing entry: ${absent}`);

  // The entry named `batch`: GET and PUT address it.
  ok(await client.POST("/api/v1/llm/feedback/{kind}", { ...collection, body: { id: "batch" } }), 201, "create batch");
  const named = ok(
    await client.PUT("/api/v1/llm/feedback/{kind}/batch", { ...collection, body: { rating: "thumbs_up" } }),
    200,
    "update batch",
  );
  check(named.id === "batch" && named.rating === "thumbs_up", `update batch: ${JSON.stringify(named)}`);
  const namedAgain = ok(await client.GET("/api/v1/llm/feedback/{kind}/batch", collection), 200, "get batch");
  check(namedAgain.id === "batch" && namedAgain.rating === "thumbs_up", "get batch");

  // list, with the shared Order and Rating types.
  const list = "/api/v1/llm/feedback/{kind}" as const;
  const page = ok(
    await client.GET(list, { params: { path: { kind }, query: { limit: 1, order: "asc" } } }),
    200,
    "list, first page",
  );
  check(page.object === "list" && page.data.length === 1 && page.has_more, `list: ${JSON.stringify(page)}`);
  check(page.data[0]?.id === first && page.last_id === first, `list page 1: ${JSON.stringify(page)}`);
  const rest = ok(
    await client.GET(list, { params: { path: { kind }, query: { after: first, limit: 100, order: "asc" } } }),
    200,
    "list, next page",
  );
  check(
    JSON.stringify(rest.data.map((item) => item.id)) === JSON.stringify([second, "batch"]) && !rest.has_more,
    `list page 2: ${JSON.stringify(rest)}`,
  );
  check(rest.data[0]?.model === "", "list items carry model \"\" when none was given");
  const mine = ok(
    await client.GET(list, {
      params: { path: { kind }, query: { rating: "thumbs_up" }, header: { "X-On-Behalf-Of": user } },
    }),
    200,
    "list as the user",
  );
  check(JSON.stringify(mine.data.map((item) => item.id)) === JSON.stringify([first]), "list as the user");
  const badLimit = errorCode(
    await client.GET(list, { params: { path: { kind }, query: { limit: 0 } } }),
    400,
    "list with limit 0",
  );
  check(badLimit === "invalid_request", `list with limit 0: ${badLimit}`);

  // batch get: entries and typed not-found results, in order.
  const batch = "/api/v1/llm/feedback/{kind}/batch" as const;
  const results = ok(
    await client.POST(batch, { ...collection, body: { ids: [second, missing, first] } }),
    200,
    "batch get",
  ).results;
  check(results.length === 3, `batch get: ${JSON.stringify(results)}`);
  const [found, notFound, foundAgain] = results;
  check(found !== undefined && !isNotFound(found) && found.id === second, "batch get [0]");
  check(notFound !== undefined && isNotFound(notFound), `batch get [1]: ${JSON.stringify(notFound)}`);
  const marker: "not_found" = notFound.error;
  check(notFound.id === missing && marker === "not_found", "batch get [1]");
  check(foundAgain !== undefined && !isNotFound(foundAgain) && foundAgain.id === first, "batch get [2]");
  const scoped = ok(await client.POST(batch, { ...asUser, body: { ids: [first, second] } }), 200, "batch as user")
    .results;
  check(
    scoped[0] !== undefined && !isNotFound(scoped[0]) && scoped[1] !== undefined && isNotFound(scoped[1]),
    `batch get as the user: ${JSON.stringify(scoped)}`,
  );

  // CSV export.
  const exported = await client.GET("/api/v1/llm/feedback/export/{kind}", {
    params: { path: { kind }, query: { order: "asc" } },
    parseAs: "text",
  });
  const csv = ok(exported, 200, "export");
  check((exported.response.headers.get("content-type") ?? "").startsWith("text/csv"), "export: content type");
  check(exported.response.headers.get("x-export-truncated") === null, "export: not truncated");
  const lines = csv.trimEnd().split("\r\n");
  check(lines[0] === CSV_HEADER, `export header: ${lines[0]}`);
  const ids = lines.slice(1).map((line) => line.split(",")[0]);
  check(JSON.stringify(ids) === JSON.stringify([first, second, "batch"]), `export rows: ${JSON.stringify(lines)}`);
  check(lines[1]?.split(",")[4] === user, `export row: ${lines[1]}`);
  const mineCsv = ok(
    await client.GET("/api/v1/llm/feedback/export/{kind}", {
      params: { path: { kind }, query: { rating: "thumbs_up" }, header: { "X-On-Behalf-Of": user } },
      parseAs: "text",
    }),
    200,
    "export as the user",
  );
  check(mineCsv.trimEnd().split("\r\n").length === 2, `export as the user: ${mineCsv}`);
}

async function main(): Promise<void> {
  await operational();
  const kinds: Kind[] = ["completions", "responses"];
  for (const kind of kinds) {
    await entries(kind);
  }
  const wrongKey = createClient<paths>({ baseUrl, headers: { Authorization: "Bearer lfk_wrong" } });
  const unauthorized = errorCode(
    await wrongKey.GET("/api/v1/llm/feedback/{kind}/{id}", { params: { path: { kind: "completions", id: "x" } } }),
    401,
    "a wrong key",
  );
  check(unauthorized === "unauthorized", `a wrong key: ${unauthorized}`);
  console.log("typescript client: every operation works against the live service");
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
