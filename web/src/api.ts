// The HTTP side of the client: sign-in (local accounts), the short-lived access token
// (memory only, never localStorage: an injected script could read it there), and JSON
// calls to /v1 that refresh the token once on a 401.

export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

export interface Session { token: string; user_id: string; expires_in: number }

let session: Session | null = null;
let refreshing: Promise<Session | null> | null = null;

export function currentSession(): Session | null {
  return session;
}

async function parse(resp: Response): Promise<unknown> {
  const text = await resp.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const err = (body as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(resp.status, err?.code ?? "http_" + resp.status, err?.message ?? resp.statusText);
  }
  return body;
}

export async function login(loginName: string, password: string): Promise<Session> {
  const resp = await fetch("/v1/auth/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ login: loginName, password }),
  });
  session = (await parse(resp)) as Session;
  return session;
}

export async function acceptInvite(token: string, password: string): Promise<Session> {
  const resp = await fetch("/v1/auth/invite", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token, password }),
  });
  session = (await parse(resp)) as Session;
  return session;
}

// ---- OIDC: authorization code flow with PKCE (server: gateway/chat/oidc.py) ----------

const VERIFIER_KEY = "sentchat.oidc.verifier";
const STATE_KEY = "sentchat.oidc.state";

function base64url(bytes: Uint8Array): string {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Whether the server has an identity provider configured, and its button's label. */
export async function oidcInfo(): Promise<{ enabled: boolean; label: string }> {
  try {
    return (await parse(await fetch("/v1/auth/oidc", { credentials: "same-origin" }))) as { enabled: boolean; label: string };
  } catch {
    return { enabled: false, label: "" };
  }
}

/** Go to the provider. The PKCE verifier is made here and stays in this tab
 *  (sessionStorage) until the code comes back; the server only sees its S256 hash now. */
export async function oidcBegin(): Promise<void> {
  const verifier = base64url(crypto.getRandomValues(new Uint8Array(48)));
  const challenge = base64url(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier))));
  const resp = await fetch("/v1/auth/oidc/begin", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code_challenge: challenge }),
  });
  const { authorization_url } = (await parse(resp)) as { authorization_url: string };
  sessionStorage.setItem(VERIFIER_KEY, verifier);
  sessionStorage.setItem(STATE_KEY, new URL(authorization_url).searchParams.get("state") ?? "");
  location.assign(authorization_url);
}

/** The provider's redirect back (``/?code=..&state=..``), if this load is one. */
export function oidcReturn(): { code: string; state: string } | { error: string } | null {
  const q = new URLSearchParams(location.search);
  if (q.get("error")) return { error: q.get("error_description") || q.get("error") || "sign-in failed" };
  const code = q.get("code");
  const state = q.get("state");
  return code && state ? { code, state } : null;
}

/** Finish the provider's sign-in: the state must be this tab's (the server checks it
 *  again against its cookie), then the server exchanges the code with our verifier. */
export async function oidcFinish(code: string, state: string): Promise<Session> {
  const verifier = sessionStorage.getItem(VERIFIER_KEY);
  const expected = sessionStorage.getItem(STATE_KEY);
  sessionStorage.removeItem(VERIFIER_KEY);
  sessionStorage.removeItem(STATE_KEY);
  history.replaceState(null, "", "/"); // the code is single-use: never leave it in the address bar
  if (!verifier || state !== expected) throw new ApiError(400, "bad_state", "This sign-in was not started in this tab; start again.");
  const resp = await fetch("/v1/auth/oidc/callback", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code, state, code_verifier: verifier }),
  });
  session = (await parse(resp)) as Session;
  return session;
}

/** A new access token from the refresh cookie (rotated by the server on each use);
 *  null when there is no valid cookie (signed out, disabled, revoked). */
export function refresh(): Promise<Session | null> {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const resp = await fetch("/v1/auth/refresh", { method: "POST", credentials: "same-origin" });
      if (resp.status === 401) {
        session = null;
        return null;
      }
      session = (await parse(resp)) as Session;
      return session;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

export async function logout(): Promise<void> {
  await fetch("/v1/auth/logout", { method: "POST", credentials: "same-origin" }).catch(() => undefined);
  session = null;
}

export async function api<T>(method: string, path: string, body?: unknown, query?: Record<string, string | number | undefined>): Promise<T> {
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
    const s = q.toString();
    if (s) url += "?" + s;
  }
  for (let attempt = 0; ; attempt++) {
    if (!session) await refresh();
    const headers: Record<string, string> = {};
    if (session) headers.Authorization = "Bearer " + session.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(url, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (resp.status === 401 && attempt === 0) {
      // Expired access token: one refresh, then the same call again.
      session = null;
      continue;
    }
    return (await parse(resp)) as T;
  }
}
