'use strict';
// A user-limited channel dm:#a,b: listed users subscribe without a token and talk; others
// get 103.
const {
  args, enc, newClient, newSub, once, main,
} = require('../lib');

main(async () => {
  const users = {};
  const waits = [];
  for (const [label, token] of Object.entries(args.tokens)) {
    const client = newClient(label, { token });
    const sub = newSub(client, label, args.channel);
    users[label] = { client, sub };
    waits.push(once(sub, label === 'carol' ? 'unsubscribed' : 'subscribed'));
    sub.subscribe();
    client.connect();
  }
  await Promise.all(waits);
  const got = once(users.bob.sub, 'publication');
  await users.alice.sub.publish(enc({ hi: 'bob' }));
  await got;
  return { states: Object.fromEntries(Object.entries(users).map(([k, v]) => [k, v.sub.state])) };
});
