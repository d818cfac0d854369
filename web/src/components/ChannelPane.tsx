import { useEffect, useState } from "preact/hooks";
import { useStore } from "../hooks";
import { slots } from "../slots";
import type { Member, Message } from "../types";
import { Composer } from "./Composer";
import { Modal, PeopleDialog } from "./Dialogs";
import { MessageItem } from "./MessageItem";
import { PresenceDot, StatusText } from "./Status";
import { type Row, VirtualList } from "./VirtualList";

function day(t: number): string {
  return new Date(t * 1000).toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

export function ChannelPane() {
  const store = useStore();
  const [panel, setPanel] = useState<"members" | "pins" | "invite" | null>(null);
  const channel = store.active ? store.channels.get(store.active) ?? null : null;
  const view = store.active ? store.views.get(store.active) : undefined;
  const messages = view?.messages ?? [];
  const readAt = view?.readAtOpen ?? 0;
  const me = store.me?.id;

  // Day separators and the "new messages" line are rows of the list like messages.
  // (Built on every render: the list is at most MAX_KEPT long and messages are edited in place.)
  const rows: Row[] = (() => {
    const out: Row[] = [];
    let lastDay = "";
    let lineShown = false;
    for (const m of messages) {
      const d = day(m.created_at);
      if (d !== lastDay) {
        lastDay = d;
        out.push({ key: `day-${d}`, render: () => <div class="day" role="separator" aria-label={d}><span>{d}</span></div> });
      }
      if (!lineShown && readAt > 0 && m.id > readAt && m.author_id !== me) {
        lineShown = true;
        out.push({ key: "new-line", render: () => <div class="new-line" role="separator" data-testid="new-messages"><span>New messages</span></div> });
      }
      out.push({ key: `m${m.id}`, render: () => <MessageItem m={m} /> });
    }
    return out;
  })();

  if (!channel) {
    return <main class="pane center"><p>Pick a channel, or create one.</p></main>;
  }
  const title = channel.kind === "dm" || channel.kind === "group_dm" ? store.channelLabel(channel) : `#${channel.name}`;
  const other = channel.kind === "dm" ? (channel.members ?? []).find((u) => u !== me) : undefined;
  return (
    <main class="pane" aria-labelledby="pane-title">
      <header class="pane-head">
        <h1 id="pane-title">{other && <PresenceDot user={other} />} {title}</h1>
        {other && <StatusText user={other} />}
        {channel.topic && <p class="topic" title={channel.topic}>{channel.topic}</p>}
        <div class="head-tools">
          {slots.headerSearch.map((S, i) => <S key={i} channel={channel} />)}
          <button class="small" onClick={() => setPanel(panel === "members" ? null : "members")}>Members</button>
          <button class="small" onClick={() => setPanel("pins")}>Pins</button>
          {(channel.kind === "public" || channel.kind === "private") && (
            <button class="small" onClick={() => setPanel("invite")}>Invite</button>
          )}
          <button class="small" aria-pressed={channel.muted} onClick={() => void store.setMuted(channel.id, !channel.muted)}>
            {channel.muted ? "Unmute" : "Mute"}
          </button>
        </div>
      </header>
      <div class="pane-body">
        {view && (!view.loaded || (view.loading && !messages.length)) && <p class="dim center">Loading messages…</p>}
        <VirtualList key={channel.id} rows={rows} label={`Messages in ${title}`}
          hasNewer={view?.hasNewer ?? false} bottomSeq={view?.bottomSeq ?? 0}
          focus={view?.focus ? { key: `m${view.focus.id}`, seq: view.focus.seq } : null}
          onNearTop={() => void store.loadOlder(channel.id)} onNearBottom={() => void store.loadNewer(channel.id)}
          onAtBottom={() => store.markRead()} onJump={() => void store.jumpToLatest(channel.id)} />
        {panel === "members" && <MembersPanel channelId={channel.id} onClose={() => setPanel(null)} />}
      </div>
      <Composer channel={channel} label={`Message ${title}`} />
      {panel === "pins" && <PinsDialog channelId={channel.id} onClose={() => setPanel(null)} />}
      {panel === "invite" && (
        <PeopleDialog title={`Invite people to #${channel.name}`} action="Invite" onClose={() => setPanel(null)}
          onDone={(ids) => store.invite(channel.id, ids)} />
      )}
    </main>
  );
}

function MembersPanel({ channelId, onClose }: { channelId: string; onClose: () => void }) {
  const store = useStore();
  const [members, setMembers] = useState<Member[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const load = (cursor?: string) => void store.members(channelId, cursor).then((r) => {
    setMembers((old) => (cursor ? [...old, ...r.members] : r.members));
    setNext(r.next);
    for (const m of r.members) void store.user(m.user_id);
  }, () => undefined);
  useEffect(() => load(), [channelId]);
  return (
    <aside class="members" aria-label="Members">
      <header class="pane-head"><h2>Members</h2><button class="small link" aria-label="Close members" onClick={onClose}>✕</button></header>
      <ul class="plain">
        {members.map((m) => (
          <li key={m.user_id}><PresenceDot user={m.user_id} /> {m.display_name || m.user_id}
            {m.role === "admin" && <span class="dim"> (admin)</span>} <StatusText user={m.user_id} /></li>
        ))}
      </ul>
      {next && <button class="small" onClick={() => load(next)}>More</button>}
    </aside>
  );
}

function PinsDialog({ channelId, onClose }: { channelId: string; onClose: () => void }) {
  const store = useStore();
  const [pins, setPins] = useState<Message[] | null>(null);
  useEffect(() => void store.pins(channelId).then(setPins, () => setPins([])), [channelId]);
  return (
    <Modal title="Pinned messages" onClose={onClose}>
      {pins === null ? <p>Loading…</p> : pins.length === 0 ? <p>Nothing pinned yet.</p> : pins.map((m) => <MessageItem key={m.id} m={m} inThread />)}
    </Modal>
  );
}
