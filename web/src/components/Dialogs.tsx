import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "../api";
import { useStore } from "../hooks";

/** A modal on the native <dialog>: focus is trapped and Escape closes it. */
export function Modal({ title, onClose, children }: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current!;
    if (!d.open) d.showModal();
    const close = () => onClose();
    d.addEventListener("close", close);
    return () => d.removeEventListener("close", close);
  }, []);
  return (
    <dialog ref={ref} aria-labelledby="dlg-title" class="card">
      <h2 id="dlg-title">{title}</h2>
      {children}
      <button class="small link close" onClick={() => ref.current?.close()}>Close</button>
    </dialog>
  );
}

export function BrowseDialog({ onClose }: { onClose: () => void }) {
  const store = useStore();
  const open = [...store.channels.values()].filter((c) => c.kind === "public" && !c.member && !c.archived);
  return (
    <Modal title="Browse channels" onClose={onClose}>
      {open.length === 0 && <p>No other public channels.</p>}
      <ul class="plain">
        {open.map((c) => (
          <li key={c.id} class="row">
            <span><strong>#{c.name}</strong> <span class="dim">{c.topic}</span></span>
            <button class="small" onClick={() => void store.join(c.id).then(onClose)}>Join #{c.name}</button>
          </li>
        ))}
      </ul>
    </Modal>
  );
}

export function CreateDialog({ onClose }: { onClose: () => void }) {
  const store = useStore();
  const [name, setName] = useState("");
  const [topic, setTopic] = useState("");
  const [priv, setPriv] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = async (e: Event) => {
    e.preventDefault();
    try {
      await store.createChannel(name.trim(), priv, topic);
      onClose();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    }
  };
  return (
    <Modal title="Create a channel" onClose={onClose}>
      <form onSubmit={submit} class="stack">
        <label>Name (lower case, digits, - and _)
          <input name="channel-name" required pattern="[a-z0-9][a-z0-9_\-]*" maxLength={80} value={name}
            onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>Topic
          <input name="channel-topic" maxLength={250} value={topic} onInput={(e) => setTopic((e.target as HTMLInputElement).value)} />
        </label>
        <label class="check"><input type="checkbox" checked={priv} onChange={(e) => setPriv((e.target as HTMLInputElement).checked)} /> Private</label>
        {error && <p class="error" role="alert">{error}</p>}
        <button type="submit">Create</button>
      </form>
    </Modal>
  );
}

/** Pick people from the user directory (name prefix search). */
export function PeopleDialog({ title, action, onClose, onDone }: {
  title: string; action: string; onClose: () => void; onDone: (ids: string[]) => Promise<void>;
}) {
  const store = useStore();
  const [query, setQuery] = useState("");
  const [found, setFound] = useState<{ id: string; display_name: string }[]>([]);
  const [picked, setPicked] = useState<string[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    void store.directory(query).then((users) => live && setFound(users.filter((u) => u.id !== store.me?.id)), () => undefined);
    return () => { live = false; };
  }, [query]);
  const toggle = (id: string) => setPicked(picked.includes(id) ? picked.filter((x) => x !== id) : [...picked, id]);
  return (
    <Modal title={title} onClose={onClose}>
      <label>Find people
        <input name="people-search" value={query} onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
      </label>
      <ul class="plain people">
        {found.map((u) => (
          <li key={u.id}>
            <label class="check">
              <input type="checkbox" checked={picked.includes(u.id)} onChange={() => toggle(u.id)} data-user={u.id} />
              {u.display_name || u.id} <span class="dim">@{u.id}</span>
            </label>
          </li>
        ))}
      </ul>
      {error && <p class="error" role="alert">{error}</p>}
      <button disabled={!picked.length} onClick={() => void onDone(picked).then(onClose, (e) => setError(e instanceof ApiError ? e.message : String(e)))}>
        {action}
      </button>
    </Modal>
  );
}
