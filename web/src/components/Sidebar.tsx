import { useState } from "preact/hooks";
import { useStore } from "../hooks";
import type { Channel } from "../types";
import { BrowseDialog, CreateDialog, PeopleDialog } from "./Dialogs";
import { PresenceDot, StatusMenu } from "./Status";

export function Sidebar({ onPick }: { onPick: () => void }) {
  const store = useStore();
  const [dialog, setDialog] = useState<"browse" | "create" | "dm" | null>(null);
  const mine = [...store.channels.values()].filter((c) => c.member && !c.archived);
  const rooms = mine.filter((c) => c.kind === "public" || c.kind === "private");
  const dms = mine.filter((c) => c.kind === "dm" || c.kind === "group_dm");

  const item = (ch: Channel) => {
    const u = store.unread.get(ch.id);
    const active = store.active === ch.id;
    const other = ch.kind === "dm" ? (ch.members ?? []).find((x) => x !== store.me?.id) : undefined;
    const label = store.channelLabel(ch);
    return (
      <li key={ch.id}>
        <a href={`#/c/${encodeURIComponent(ch.id)}`} aria-current={active ? "page" : undefined}
          class={"chan" + (ch.muted ? " muted" : "") + (u?.unread ? " has-unread" : "")}
          data-channel={ch.id}
          onClick={(e) => { e.preventDefault(); void store.open(ch.id); onPick(); }}>
          {other ? <PresenceDot user={other} /> : <span class="hash" aria-hidden="true">{ch.kind === "private" ? "🔒" : "#"}</span>}
          <span class="label">{label}</span>
          {u && u.mentions > 0 && <span class="badge mention-badge" aria-label={`${u.mentions} mentions`}>@{u.mentions}</span>}
          {u && u.unread > 0 && !ch.muted && <span class="badge unread-badge" aria-label={`${u.unread} unread`}>{u.more ? "1000+" : u.unread}</span>}
        </a>
      </li>
    );
  };

  return (
    <nav class="sidebar" aria-label="Channels and direct messages">
      <div class="me">
        <StatusMenu />
        {store.notifyPermission === "default" && (
          <button class="small" onClick={() => void store.askNotifications()} data-testid="enable-notifications">
            Enable desktop notifications
          </button>
        )}
      </div>
      <h2 id="ch-h">Channels</h2>
      <ul aria-labelledby="ch-h">{rooms.map(item)}</ul>
      <div class="row">
        <button class="small" onClick={() => setDialog("browse")}>Browse channels</button>
        <button class="small" onClick={() => setDialog("create")}>Create channel</button>
      </div>
      <h2 id="dm-h">Direct messages</h2>
      <ul aria-labelledby="dm-h">{dms.map(item)}</ul>
      <div class="row">
        <button class="small" onClick={() => setDialog("dm")}>New message</button>
        <button class="small link" onClick={() => void store.signOut()}>Sign out</button>
      </div>
      {dialog === "browse" && <BrowseDialog onClose={() => setDialog(null)} />}
      {dialog === "create" && <CreateDialog onClose={() => setDialog(null)} />}
      {dialog === "dm" && (
        <PeopleDialog title="New direct message" action="Open conversation" onClose={() => setDialog(null)}
          onDone={(ids) => store.openDm(ids)} />
      )}
    </nav>
  );
}
