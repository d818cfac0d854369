'use strict';
// Connection token failures: an invalid token ends in the terminal disconnected state (3500)
// without a reconnect loop; an expired token (error 109) makes the SDK call getToken and
// connect with the new token.
const {
  args, newClient, once, sleep, main,
} = require('../lib');

main(async () => {
  // Short backoff, so that a reconnect loop would show up quickly.
  const fast = { minReconnectDelay: 50, maxReconnectDelay: 100 };

  const bad = newClient('bad', { token: args.bad_token, ...fast });
  const badDisconnected = once(bad, 'disconnected');
  bad.connect();
  const badCtx = await badDisconnected;

  let getTokenCalls = 0;
  const expired = newClient('expired', {
    token: args.expired_token,
    getToken: async () => {
      getTokenCalls += 1;
      return args.good_token;
    },
    ...fast,
  });
  const expiredConnected = once(expired, 'connected');
  expired.connect();
  await expiredConnected;

  // Many reconnect delays later: the bad client must still be disconnected, with one attempt.
  await sleep(500);
  return {
    bad: { state: bad.state, disconnectedCtx: badCtx },
    expired: { state: expired.state, getTokenCalls },
  };
});
