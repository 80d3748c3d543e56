// One user session sent by the unmodified Exceptionless Node client.
//
// Environment:
//   EXCEPTIONLESS_SERVER_URL  the gateway, e.g. http://127.0.0.1:8080 (required)
//   EXCEPTIONLESS_API_KEY     an API key the gateway knows, 10+ characters (required)
//   SESSION_USER_ID           user identity (default alice@example.com)
//   SESSION_USER_NAME         display name (default Alice)
//   SESSION_ORDER             "batch-first" (default): the queued events are sent,
//                             then a heartbeat, then the end;
//                             "heartbeat-first": a heartbeat is sent before the
//                             queued batch that holds the session start.
//
// Steps: start (with identity and name), usage, log, an exception, a heartbeat,
// the end (heartbeat?close=true), all queued events sent. On exit the client's
// own beforeExit handler sends the close once more; the gateway ignores it.
//
// Prints one JSON line on stdout: {"session_id": ..., "refused": [...]}.
// Exits non-zero when the gateway refused anything (status >= 400).
const serverUrl = process.env.EXCEPTIONLESS_SERVER_URL;
const apiKey = process.env.EXCEPTIONLESS_API_KEY;
if (!serverUrl || !apiKey) {
  console.error("set EXCEPTIONLESS_SERVER_URL and EXCEPTIONLESS_API_KEY");
  process.exit(2);
}
const userId = process.env.SESSION_USER_ID || "alice@example.com";
const userName = process.env.SESSION_USER_NAME || "Alice";
const order = process.env.SESSION_ORDER || "batch-first";

// Record every response status so a refusal fails the script.
const refused = [];
const realFetch = globalThis.fetch.bind(globalThis);
globalThis.fetch = async (url, options) => {
  const response = await realFetch(url, options);
  if (response.status >= 400) {
    refused.push(`${options?.method || "GET"} ${url} -> ${response.status}`);
  }
  return response;
};
// Imported after the hook above: the client binds fetch when it is created.
const { Exceptionless } = await import("@exceptionless/node");

await Exceptionless.startup((c) => {
  c.apiKey = apiKey;
  c.serverUrl = serverUrl;
  c.setUserIdentity(userId, userName);
  c.useSessions(true, 30000, true);
});
// startup() queued the session start; its reference_id is the session id.
const sessionId = Exceptionless.config.currentSessionIdentifier;

await Exceptionless.submitFeatureUsage("checkout");
await Exceptionless.submitLog("cart", "added 2 items", "Info");
try {
  throw new TypeError("price is not a number");
} catch (error) {
  await Exceptionless.submitException(error);
}

if (order === "heartbeat-first") {
  await Exceptionless.submitSessionHeartbeat();
  await Exceptionless.processQueue();
} else {
  await Exceptionless.processQueue();
  await Exceptionless.submitSessionHeartbeat();
}
await Exceptionless.submitSessionEnd();
await Exceptionless.processQueue();

console.log(JSON.stringify({ session_id: sessionId, refused }));
if (refused.length > 0) {
  console.error(`refused: ${refused.join("; ")}`);
  process.exitCode = 1;
}
