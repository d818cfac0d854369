'use strict';
// Expiring tokens refreshed through getToken: the connection token (refresh command) and a
// subscription token (sub_refresh command) keep the connection and the subscription past
// their original expiry (+ the server's expired_close_delay / expired_sub_close_delay). The
// controls get no new token: the server closes that connection with 3005 and unsubscribes
// that subscription with 2501 (proving the expiry is enforced). The server pings every
// 2 s meanwhile: the SDK's pongs keep every connection open.
const {
  args, ask, enc, dec, newClient, newSub, once, until, main,
} = require('../lib');

const never = () => new Promise(() => {});

main(async () => {
  let calls = 0;
  let subCalls = 0;
  const client = newClient('refreshing', {
    token: args.token,
    getToken: async () => {
      calls += 1;
      return args.fresh_token;
    },
  });
  const sub = newSub(client, 'refreshing', args.channel, {
    token: args.sub_token,
    getToken: async () => {
      subCalls += 1;
      return args.fresh_sub_token;
    },
  });
  const stuckSub = newSub(client, 'stuck', args.stuck_channel, { token: args.stuck_sub_token, getToken: never });
  const ready = [once(sub, 'subscribed'), once(stuckSub, 'subscribed')];
  sub.subscribe();
  stuckSub.subscribe();
  const connected = once(client, 'connected');
  client.connect();
  const ctx = await connected;
  await Promise.all(ready);
  const stuckSubExpired = once(stuckSub, 'subscribing', (c) => c.code !== 0);

  // Its token expires a second after the refreshing client's one.
  const stuck = newClient('stuck', { token: args.stuck_token, getToken: never });
  const stuckConnected = once(stuck, 'connected');
  const stuckClosed = once(stuck, 'connecting', (c) => c.code !== 0);
  stuck.connect();
  await stuckConnected;
  const stuckCtx = await stuckClosed;
  const stuckSubCtx = await stuckSubExpired;

  await until(() => calls >= 1 && subCalls >= 1);
  const server = await ask('check', { client: ctx.client, channel: args.channel });
  const rpc = await client.rpc('whoami', enc({}));
  const got = once(sub, 'publication');
  await sub.publish(enc({ still: 'here' }));
  await got;
  return {
    getTokenCalls: calls,
    subGetTokenCalls: subCalls,
    state: client.state,
    subState: sub.state,
    client: ctx.client,
    rpcClient: dec(rpc.data).client,
    stuckConnecting: stuckCtx,
    stuckSubscribing: stuckSubCtx,
    server,
  };
});
