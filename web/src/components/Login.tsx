import { useEffect, useState } from "preact/hooks";
import { acceptInvite, ApiError, login, oidcBegin, oidcInfo } from "../api";

export function Login({ invite, initialError, onSignedIn }: { invite: string | null; initialError?: string | null; onSignedIn: () => void }) {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [repeat, setRepeat] = useState("");
  const [error, setError] = useState<string | null>(initialError ?? null);
  const [busy, setBusy] = useState(false);
  const [sso, setSso] = useState<string | null>(null); // the provider button's label, when configured

  useEffect(() => {
    if (!invite) void oidcInfo().then((i) => setSso(i.enabled ? i.label : null));
  }, [invite]);

  const single = async () => {
    setError(null);
    setBusy(true);
    try {
      await oidcBegin(); // leaves the page for the provider
    } catch (err) {
      setError(err instanceof ApiError ? err.message : "Cannot reach the server.");
      setBusy(false);
    }
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    if (invite && password !== repeat) {
      setError("The two passwords differ.");
      return;
    }
    setBusy(true);
    try {
      if (invite) await acceptInvite(invite, password);
      else await login(name.trim(), password);
      onSignedIn();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : "Cannot reach the server.");
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="center">
      <form class="card login" onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">{invite ? "Choose your password" : "Sign in to SENTchat"}</h1>
        {!invite && (
          <label>
            User name or e-mail
            <input name="login" autoComplete="username" required value={name}
              onInput={(e) => setName((e.target as HTMLInputElement).value)} />
          </label>
        )}
        <label>
          Password
          <input name="password" type="password" autoComplete={invite ? "new-password" : "current-password"}
            required minLength={invite ? 10 : 1} value={password}
            onInput={(e) => setPassword((e.target as HTMLInputElement).value)} />
        </label>
        {invite && (
          <label>
            Repeat the password
            <input name="repeat" type="password" autoComplete="new-password" required value={repeat}
              onInput={(e) => setRepeat((e.target as HTMLInputElement).value)} />
          </label>
        )}
        {error && <p class="error" role="alert">{error}</p>}
        <button type="submit" disabled={busy}>{invite ? "Set password and sign in" : "Sign in"}</button>
        {sso && <button type="button" class="secondary sso" disabled={busy} onClick={() => void single()}>{sso}</button>}
      </form>
    </main>
  );
}
