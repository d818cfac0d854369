import { useEffect, useState } from "preact/hooks";
import { ApiError, oidcFinish, oidcReturn, refresh } from "../api";
import { useStore } from "../hooks";
import { Login } from "./Login";
import { Sidebar } from "./Sidebar";
import { ChannelPane } from "./ChannelPane";
import { ThreadPanel } from "./ThreadPanel";
import { ConnectionBanner } from "./ConnectionBanner";

type Phase = "checking" | "signed-out" | "ready" | "failed";

export function App() {
  const store = useStore();
  const [phase, setPhase] = useState<Phase>("checking");
  const [navOpen, setNavOpen] = useState(false);
  const [ssoError, setSsoError] = useState<string | null>(null);
  const invite = new URLSearchParams(location.hash.replace(/^#\/invite\?/, "")).get("token");

  const begin = async () => {
    try {
      await store.start();
      setPhase("ready");
    } catch (e) {
      store.error = String(e);
      setPhase("failed");
    }
  };

  useEffect(() => {
    if (invite && location.hash.startsWith("#/invite")) {
      setPhase("signed-out");
      return;
    }
    const back = oidcReturn();
    if (back) {
      // Back from the identity provider: finish its sign-in (or show why it failed).
      const done = "code" in back ? oidcFinish(back.code, back.state) : Promise.reject(new ApiError(401, "oidc", back.error));
      void done.then(() => begin(), (e) => {
        history.replaceState(null, "", "/");
        setSsoError(e instanceof ApiError ? e.message : "Cannot reach the server.");
        setPhase("signed-out");
      });
      return;
    }
    // A refresh cookie from an earlier visit signs in without asking.
    void refresh().then((s) => (s ? begin() : setPhase("signed-out")), () => setPhase("signed-out"));
  }, []);

  if (phase === "checking") return <main class="center" aria-busy="true"><p>Loading…</p></main>;
  if (phase === "signed-out") {
    return <Login invite={location.hash.startsWith("#/invite") ? invite : null} initialError={ssoError} onSignedIn={() => {
      history.replaceState(null, "", "#");
      setPhase("checking");
      void begin();
    }} />;
  }
  if (phase === "failed") return <main class="center"><p role="alert">Could not start: {store.error}</p></main>;
  return (
    <div class={"layout" + (store.openThread ? " with-thread" : "") + (navOpen ? " nav-open" : "")}>
      <ConnectionBanner />
      <button class="nav-toggle" aria-label="Show channels" aria-expanded={navOpen} onClick={() => setNavOpen(!navOpen)}>☰</button>
      <Sidebar onPick={() => setNavOpen(false)} />
      <ChannelPane />
      {store.openThread !== null && <ThreadPanel parentId={store.openThread} />}
    </div>
  );
}
