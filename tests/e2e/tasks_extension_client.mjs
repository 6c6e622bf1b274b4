// A client that runs a tool as a task through the official Tasks package
// (@modelcontextprotocol/ext-tasks) on the official TypeScript client: as the 2026-07-28
// extension has tasks, or (PROTOCOL=2025-11-25) as the 2025-11-25 core protocol has them.
// Prints what it was asked, the task's outcome and the tool's result as one JSON line.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient, resultFromTaskOutcome } from "@modelcontextprotocol/ext-tasks/client";

const [url, key, tool, argumentsJson, answer] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${key}` };
const protocolVersion = process.env.PROTOCOL ?? "2026-07-28";
const modern = protocolVersion === "2026-07-28";
const clientInfo = { name: "gantry-e2e-tasks", version: "1" };
const clientCapabilities = { elicitation: {} };

const client = new Client(clientInfo, {
  capabilities: clientCapabilities,
  ...(modern ? { versionNegotiation: { mode: { pin: protocolVersion } } } : {}),
});
await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: auth } }));

let nextId = 1;
// The package frames 2026-07-28 task requests itself and leaves their transport to the host.
async function rawDispatch(request, options) {
  const headers = {
    ...auth,
    ...(options?.context?.headers ?? {}),
    "Content-Type": "application/json",
    Accept: "application/json, text/event-stream",
    "MCP-Protocol-Version": protocolVersion,
    "Mcp-Method": request.method,
  };
  if (request.method === "tools/call") headers["Mcp-Name"] = request.params.name;
  const id = nextId++;
  const response = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify({ jsonrpc: "2.0", id, ...request }),
    signal: options?.signal,
  });
  const text = await response.text();
  const messages = (response.headers.get("content-type") ?? "").startsWith("text/event-stream")
    ? text.split("\n").filter((l) => l.startsWith("data:") && l.slice(5).trim()).map((l) => JSON.parse(l.slice(5)))
    : [JSON.parse(text)];
  const message = messages.find((m) => m.id === id);
  return message.error ? { kind: "error", error: message.error } : { kind: "result", result: message.result };
}

const asked = [];
const session = createTaskSessionFromClient(client, {
  endpointId: url,
  ...(modern ? { rawDispatch, v2RequestFraming: { protocolVersion, clientInfo, clientCapabilities } } : {}),
  onInputRequest: async (request) => {
    asked.push(request.kind);
    return { action: "accept", content: { interpretation: answer } };
  },
});
try {
  const execution = await session.callTool(tool, JSON.parse(argumentsJson));
  const { outcome } = await execution.settle();
  const result = resultFromTaskOutcome(outcome);
  console.log(JSON.stringify({ asked, outcome: outcome.kind ?? outcome.status ?? null, result }));
} finally {
  await session.close();
  await client.close();
}
