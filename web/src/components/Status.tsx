import { useState } from "preact/hooks";
import { useStore } from "../hooks";
import { Modal } from "./Dialogs";

export function PresenceDot({ user }: { user: string }) {
  const store = useStore();
  const s = store.users.get(user)?.status;
  const state = !s || !s.online ? "offline" : s.dnd ? "dnd" : s.away ? "away" : "online";
  const label = { offline: "offline", online: "online", away: "away", dnd: "do not disturb" }[state];
  return <span class={`dot ${state}`} role="img" aria-label={label} title={label} />;
}

/** The custom status shown after a name (emoji and text, as text). */
export function StatusText({ user }: { user: string }) {
  const store = useStore();
  const s = store.users.get(user)?.status;
  if (!s || (!s.text && !s.emoji)) return null;
  return <span class="status-text" title={s.text}>{s.emoji} {s.text}</span>;
}

const DND = [
  { label: "30 minutes", seconds: 1800 },
  { label: "1 hour", seconds: 3600 },
  { label: "4 hours", seconds: 4 * 3600 },
  { label: "24 hours", seconds: 24 * 3600 },
];

export function StatusMenu() {
  const store = useStore();
  const [open, setOpen] = useState(false);
  const [text, setText] = useState("");
  const [emoji, setEmoji] = useState("");
  const [hours, setHours] = useState("0");
  const me = store.me;
  if (!me) return null;
  const now = Math.floor(Date.now() / 1000);
  return (
    <div class="status-menu">
      <button class="me-button" onClick={() => setOpen(true)} aria-haspopup="dialog" data-testid="status-button">
        <PresenceDot user={me.id} /> <strong>{me.display_name || me.id}</strong>
        {me.status.dnd && <span class="dnd-tag">DND</span>}
        <StatusText user={me.id} />
      </button>
      {open && (
        <Modal title="Your status" onClose={() => setOpen(false)}>
          <form class="stack" onSubmit={(e) => {
            e.preventDefault();
            const h = Number(hours);
            void store.setStatus({ text, emoji, until: h > 0 ? now + h * 3600 : 0 });
          }}>
            <div class="row">
              <label>Emoji <input name="status-emoji" size={3} maxLength={16} value={emoji} onInput={(e) => setEmoji((e.target as HTMLInputElement).value)} /></label>
              <label>Status <input name="status-text" maxLength={100} value={text} onInput={(e) => setText((e.target as HTMLInputElement).value)} /></label>
            </div>
            <label>Clear after
              <select value={hours} onChange={(e) => setHours((e.target as HTMLSelectElement).value)}>
                <option value="0">never</option><option value="1">1 hour</option><option value="4">4 hours</option><option value="24">today</option>
              </select>
            </label>
            <button type="submit">Save status</button>
          </form>
          <h3>Do not disturb</h3>
          <div class="row wrap">
            {DND.map((d) => (
              <button key={d.seconds} class="small" onClick={() => void store.setStatus({ dnd_until: now + d.seconds })}>
                DND for {d.label}
              </button>
            ))}
            {me.status.dnd && <button class="small" onClick={() => void store.setStatus({ dnd_until: 0 })}>End DND</button>}
          </div>
          <h3>Presence</h3>
          <button class="small" onClick={() => void store.setStatus({ away: !me.status.away })}>
            {me.status.away ? "Set me active" : "Set me away"}
          </button>
          <button class="small" onClick={() => void store.setStatus({ text: "", emoji: "", until: 0 })}>Clear status</button>
        </Modal>
      )}
    </div>
  );
}
