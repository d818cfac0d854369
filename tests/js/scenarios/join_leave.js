'use strict';
// join/leave pushes reach the subscriber that asked for them (joinLeave: true), and only it.
const {
  args, newClient, newSub, once, until, main,
} = require('../lib');

main(async () => {
  const alice = newClient('alice', { token: args.alice_token });
  const bob = newClient('bob', { token: args.bob_token });
  const carol = newClient('carol', { token: args.carol_token });
  alice.connect();
  bob.connect();
  carol.connect();
  const watcher = newSub(alice, 'alice', args.channel, { joinLeave: true });
  const quiet = newSub(bob, 'bob', args.channel);
  const third = newSub(carol, 'carol', args.channel);
  const isUser = (user) => (ctx) => ctx.info.user === user;

  let ev = once(watcher, 'subscribed');
  watcher.subscribe();
  await ev;

  ev = once(watcher, 'join', isUser(args.bob));
  quiet.subscribe();
  const bobJoin = await ev;

  ev = once(watcher, 'join', isUser(args.carol));
  third.subscribe();
  await ev;

  ev = once(watcher, 'leave', isUser(args.bob));
  quiet.unsubscribe();
  const bobLeave = await ev;

  ev = once(watcher, 'leave', isUser(args.carol));
  carol.disconnect();
  await ev;

  // Dave subscribes and unsubscribes at once: both commands in one frame. Watchers must see
  // his join before his leave, never a join of someone already gone.
  const dave = newClient('dave', { token: args.dave_token });
  const daveSub = newSub(dave, 'dave', args.channel);
  const daveConnected = once(dave, 'connected');
  dave.connect();
  await daveConnected;
  const daveEvents = [];
  const record = (kind) => (ctx) => {
    if (ctx.info.user === args.dave) {
      daveEvents.push(kind);
    }
  };
  watcher.on('join', record('join'));
  watcher.on('leave', record('leave'));
  dave.startBatching();
  daveSub.subscribe();
  daveSub.unsubscribe();
  dave.stopBatching();
  await until(() => daveEvents.length >= 2);
  return { daveEvents, bobClient: bob._client, carolClient: carol._client, bobJoinClient: bobJoin.info.client, bobLeaveClient: bobLeave.info.client };
});
