// A graphql-ws client for udm-server's tests: node client.mjs '<spec JSON>'
// spec: {"url", "token", "subscriptions": [{"query", "variables", "after"}], "count", "timeout_ms"}
// Prints one JSON line per thing that happens: {"connected"}, {"sub", "next"}, {"sub", "error"},
// {"sub", "complete"}, {"closed": {"code", "reason"}}; exits after `count` nexts or the timeout.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const spec = JSON.parse(process.argv[2]);
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');
let nexts = 0;
let client;
const done = (code) => {
  client?.dispose();
  setTimeout(() => process.exit(code), 50);
};
client = createClient({
  url: spec.url,
  webSocketImpl: WebSocket,
  connectionParams: { token: spec.token },
  retryAttempts: 0,
  lazy: false,
  on: {
    connected: () => out({ connected: true }),
    closed: (e) => {
      out({ closed: { code: e?.code, reason: e?.reason } });
      done(0);
    },
  },
  onNonLazyError: () => {},
});
spec.subscriptions.forEach((s, i) => {
  client.subscribe(
    { query: s.query, variables: s.variables ?? {}, extensions: s.after == null ? {} : { after: s.after } },
    {
      next: (v) => {
        out({ sub: i, next: v });
        if (++nexts >= spec.count) done(0);
      },
      error: (e) => out({ sub: i, error: Array.isArray(e) ? e : { code: e?.code, reason: e?.reason, message: e?.message } }),
      complete: () => out({ sub: i, complete: true }),
    },
  );
});
setTimeout(() => {
  out({ timeout: true });
  done(1);
}, spec.timeout_ms ?? 20000);
