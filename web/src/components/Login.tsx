import { useState } from "preact/hooks";
import { acceptInvite, ApiError, login } from "../api";

export function Login({ invite, onSignedIn }: { invite: string | null; onSignedIn: () => void }) {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [repeat, setRepeat] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

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
      </form>
    </main>
  );
}
