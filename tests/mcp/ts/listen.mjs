// The official MCP TypeScript client (@modelcontextprotocol/client 2.x),
// pinned to MCP 2026-07-28, against a running pytest-mcp: calls tools, then
// listens to pytest://sessions/latest until that session finishes.
// tests/mcp/test_typescript.py drives it and moves the session on.
//
// Usage: node listen.mjs URL NPM_PREFIX
// Prints one JSON object per line: what a user of the client would see.
import { createRequire } from "node:module";
import { join } from "node:path";

const [url, prefix] = process.argv.slice(2);
// The package lives in the tests' npm prefix (scripts/npm-tools), not beside
// this file.
const require = createRequire(join(prefix, "node_modules", "noop.js"));
const { Client, StreamableHTTPClientTransport } = require("@modelcontextprotocol/client");

const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const LATEST = "pytest://sessions/latest";

const client = new Client(
  { name: "pytest-mcp-ts-test", version: "1.0.0" },
  { versionNegotiation: { mode: { pin: "2026-07-28" } } },
);
await client.connect(new StreamableHTTPClientTransport(new URL(url)));

const tools = await client.listTools();
say("tools", { names: tools.tools.map((t) => t.name).sort() });

const session = await client.callTool({ name: "get_session", arguments: {} });
say("get_session", { isError: session.isError ?? false, session: session.structuredContent?.session });

const bad = await client.callTool({
  name: "record_test_outcome",
  arguments: { nodeid: "t.py::a", outcome: "exploded", duration: 1 },
});
say("bad_arguments", { isError: bad.isError ?? false, text: bad.content.map((c) => c.text).join("\n") });

try {
  await client.callTool({ name: "get_failurez", arguments: {} });
  say("unknown_tool", { code: null });
} catch (e) {
  say("unknown_tool", { code: e.code ?? null, message: String(e.message) });
}

const read = async () => JSON.parse((await client.readResource({ uri: LATEST })).contents[0].text);

let subscription;
let done;
const finished = new Promise((resolve) => (done = resolve));
client.setNotificationHandler("notifications/resources/updated", async (n) => {
  const now = await read();
  say("updated", {
    uri: n.params.uri,
    status: now.session.status,
    failures: now.first_failures.map((f) => f.nodeid),
  });
  if (now.session.status !== "running") done();
});

subscription = await client.listen({ resourceSubscriptions: [LATEST] });
say("acknowledged", { honored: subscription.honoredFilter });

await finished;
await subscription.close();
say("closed", { how: await subscription.closed });
await client.close();
