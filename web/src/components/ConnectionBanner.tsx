import { useStore } from "../hooks";

/** Shown while the connection is down: centrifuge-js reconnects on its own and recovers
 *  each channel from the durable stream when it is back. */
export function ConnectionBanner() {
  const store = useStore();
  if (store.conn === "connected" || store.conn === "connecting") return null;
  return (
    <div class="banner" role="status" aria-live="polite" data-testid="reconnecting">
      {store.conn === "reconnecting" ? "Reconnecting…" : "Offline: messages will catch up when the connection is back."}
    </div>
  );
}
