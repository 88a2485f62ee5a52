import escapeHtml from 'escape-html'

/** What the consent page shows about the scopes it can grant. */
export const SCOPE_DESCRIPTIONS: Record<string, string> = {
  'context:read': 'Read and search entries and their history',
  'context:write': 'Write, append to and restore entries',
  'context:delete': 'Delete entries, and write entries that expire'
}

const STYLE = `
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f4f5;color:#18181b}
main{max-width:30rem;margin:0 auto;padding:1.5rem 1rem}
h1{font-size:1.35rem;line-height:1.3;margin:0 0 .75rem}
p{margin:.5rem 0}
.card{background:#fff;border:1px solid #e4e4e7;border-radius:.75rem;padding:1.25rem;margin:0 0 1rem}
.muted{color:#52525b;font-size:.9rem}
.client{overflow-wrap:anywhere}
.error{background:#fef2f2;border:1px solid #fecaca;color:#991b1b;border-radius:.5rem;padding:.75rem;margin:0 0 1rem}
fieldset{border:0;padding:0;margin:0 0 1rem}
legend{font-weight:600;margin-bottom:.5rem}
label{display:block}
.scope{display:flex;gap:.6rem;align-items:flex-start;padding:.5rem 0;border-top:1px solid #f4f4f5}
.scope:first-of-type{border-top:0}
.scope input{margin-top:.3rem;width:1.1rem;height:1.1rem;flex:none}
.scope code{font-size:.85rem}
input[type=password],input[type=text]{width:100%;font:inherit;padding:.6rem .7rem;border:1px solid #a1a1aa;border-radius:.5rem;margin:.25rem 0 .75rem}
input:focus,button:focus{outline:3px solid #93c5fd;outline-offset:1px}
.buttons{display:flex;gap:.75rem;flex-wrap:wrap}
button{flex:1 1 8rem;font:inherit;font-weight:600;padding:.7rem 1rem;border-radius:.5rem;border:1px solid #18181b;cursor:pointer;min-height:2.75rem}
button[value=allow]{background:#18181b;color:#fff}
button[value=deny]{background:#fff;color:#18181b}
details{margin:.25rem 0 .75rem}
summary{cursor:pointer;color:#1d4ed8}
`

function page (title: string, nonce: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${escapeHtml(title)}</title>
<style nonce="${nonce}">${STYLE}</style>
</head>
<body>
<main>
${body}
</main>
</body>
</html>
`
}

export interface ConsentPageModel {
  /** Form target: this interaction's URL. */
  action: string
  csrfToken: string
  nonce: string
  clientName: string
  /** The client's id when it is a URL (a Client ID Metadata Document): shown, since it names who vouches for the client. */
  clientUrl: string | undefined
  redirectHost: string
  /** Grantable scopes, and whether each is offered checked (the client asked for it). */
  scopes: Array<{ scope: string, checked: boolean }>
  namespace: string
  /** Whether an owner password is set (otherwise only API tokens sign in). */
  ownerPasswordSet: boolean
  signInWith: 'password' | 'token'
  error: string | undefined
}

/** The sign-in and consent page: one form, works without JavaScript, usable at 375 px wide. */
export function renderConsentPage (model: ConsentPageModel): string {
  const client = escapeHtml(model.clientName)
  const scopes = model.scopes.map(({ scope, checked }) => `
<label class="scope"><input type="checkbox" name="scope" value="${escapeHtml(scope)}"${checked ? ' checked' : ''}>
<span>${escapeHtml(SCOPE_DESCRIPTIONS[scope] ?? scope)}<br><code>${escapeHtml(scope)}</code></span></label>`).join('')
  const password = `
<label for="password">Owner password</label>
<input type="password" id="password" name="password" autocomplete="current-password"${model.signInWith === 'password' ? ' autofocus' : ''}>`
  const token = `
<label for="token">API token</label>
<input type="password" id="token" name="token" autocomplete="off" spellcheck="false"${model.signInWith === 'token' ? ' autofocus' : ''}>
<p class="muted">A token from <code>node dist/cli.js token create</code>: the connection then gets at most that token's scopes, in its namespace.</p>`
  const signIn = model.ownerPasswordSet
    ? `${password}
<details${model.signInWith === 'token' ? ' open' : ''}><summary>Sign in with an API token instead</summary>${token}</details>`
    : token
  return page(`Allow ${model.clientName} to use Shared Context?`, model.nonce, `
<div class="card">
<h1>Allow <span class="client">${client}</span> to use your Shared Context?</h1>
<p class="muted">After you allow it, you are sent back to <strong class="client">${escapeHtml(model.redirectHost)}</strong>.${model.clientUrl === undefined ? '' : ` The client is described by <span class="client">${escapeHtml(model.clientUrl)}</span>.`} Only allow clients you started connecting yourself.</p>
</div>
${model.error === undefined ? '' : `<div class="error" role="alert">${escapeHtml(model.error)}</div>`}
<form class="card" method="post" action="${escapeHtml(model.action)}">
<input type="hidden" name="csrf" value="${escapeHtml(model.csrfToken)}">
<fieldset>
<legend>It may</legend>${scopes}
</fieldset>
<label for="namespace">In namespace</label>
<input type="text" id="namespace" name="namespace" value="${escapeHtml(model.namespace)}" autocomplete="off" spellcheck="false" pattern="[A-Za-z0-9_.:/\\-]{1,255}" required>
<fieldset>
<legend>Sign in</legend>${signIn}
</fieldset>
<div class="buttons">
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</div>
</form>`)
}

/** oidc-provider's error page (a bad authorization request that cannot be sent back to the client). */
export function renderErrorPage (error: string, description: string | undefined, nonce = ''): string {
  return page('Sign-in failed', nonce, `
<div class="card">
<h1>This sign-in cannot go on</h1>
<p><code>${escapeHtml(error)}</code>${description === undefined ? '' : `: ${escapeHtml(description)}`}</p>
<p class="muted">Start connecting again from your client. If it keeps failing, remove the connector and add it again.</p>
</div>`)
}

/**
 * Security headers of every page: no framing (clickjacking), no other script or style than the
 * page's own, forms posted only here or — through the redirect that follows — to the client.
 */
export function pageHeaders (nonce: string, formTargets: string[]): Record<string, string> {
  return {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'content-security-policy': [
      "default-src 'none'",
      `style-src 'nonce-${nonce}'`,
      `form-action 'self' ${formTargets.join(' ')}`.trim(),
      "frame-ancestors 'none'",
      "base-uri 'none'"
    ].join('; ')
  }
}
