import escapeHtml from 'escape-html'

/** What the consent page says about each scope it can grant: a short name and what it lets the client do. */
export const SCOPE_DESCRIPTIONS: Record<string, { name: string, description: string }> = {
  'context:read': { name: 'Read', description: 'read and search entries, and see their history' },
  'context:write': { name: 'Write', description: 'create entries, change and append to them, restore old versions' },
  'context:delete': { name: 'Delete', description: 'delete entries, and write entries that delete themselves after a time' }
}

// Dark text on light, contrast ≥ 4.5:1 for text (≥ 3:1 for borders and the focus ring), touch
// targets ≥ 44 px, one column from 320 px up. No external assets: the CSP allows this style only.
const STYLE = `
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;font:1rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f4f5;color:#18181b;-webkit-text-size-adjust:100%}
main{max-width:32rem;margin:0 auto;padding:1rem .75rem 2rem}
.site{margin:.25rem .25rem .75rem;font-size:.9rem;color:#3f3f46;overflow-wrap:anywhere}
h1{font-size:1.375rem;line-height:1.3;margin:0 0 1rem}
p{margin:.5rem 0}
code{font:.875em/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.card{background:#fff;border:1px solid #d4d4d8;border-radius:.75rem;padding:1.25rem 1rem;margin:0 0 1rem}
.client{overflow-wrap:anywhere}
.who{margin:0 0 .75rem}
.who dt{font-size:.9rem;color:#3f3f46}
.who dd{margin:0 0 .5rem}
.host{display:inline-block;font:600 1.05rem/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f4f4f5;border:1px solid #a1a1aa;border-radius:.375rem;padding:.125rem .5rem;overflow-wrap:anywhere}
.help{font-size:.9rem;color:#3f3f46}
.error{background:#fef2f2;border:2px solid #b91c1c;color:#7f1d1d;border-radius:.5rem;padding:.75rem 1rem;margin:0 0 1rem;font-weight:600}
fieldset{border:0;padding:0;margin:0 0 1.25rem;min-width:0}
legend{font-weight:700;font-size:1.05rem;padding:0;margin:0 0 .25rem}
.scope{display:flex;gap:.75rem;align-items:flex-start;min-height:2.75rem;padding:.625rem 0;border-top:1px solid #e4e4e7;cursor:pointer}
.scope:first-of-type{border-top:0}
.scope input{margin:.125rem 0 0;width:1.375rem;height:1.375rem;flex:none;accent-color:#1d4ed8}
.scope code{display:block;color:#52525b}
.field{margin:0 0 1.25rem}
.field label,.sign-in label{display:block;font-weight:700}
input[type=password],input[type=text]{display:block;width:100%;min-height:2.75rem;font:inherit;color:inherit;background:#fff;padding:.5rem .75rem;border:1px solid #71717a;border-radius:.5rem;margin:.375rem 0 .5rem}
input[aria-invalid=true]{border:2px solid #b91c1c}
:focus-visible{outline:3px solid #1d4ed8;outline-offset:2px}
input[type=password]:focus,input[type=text]:focus{outline:3px solid #1d4ed8;outline-offset:1px}
details{margin:.5rem 0 0}
summary{cursor:pointer;color:#1d4ed8;padding:.625rem 0}
.buttons{display:flex;gap:.75rem;flex-wrap:wrap;margin-top:1.5rem}
button{flex:1 1 8rem;min-height:2.75rem;font:inherit;font-weight:700;padding:.625rem 1rem;border-radius:.5rem;border:2px solid #18181b;cursor:pointer}
button[value=allow]{background:#18181b;color:#fff}
button[value=deny]{background:#fff;color:#18181b}
@media (min-width:40rem){main{padding-top:3rem}.card{padding:1.5rem}}
`

function page (title: string, nonce: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<meta name="color-scheme" content="light">
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
  /** Host (and port) of this server, so the owner knows which deploy asks. */
  serverHost: string
  clientName: string
  /** The client's id when it is a URL (a Client ID Metadata Document): shown, since it names who vouches for the client. */
  clientUrl: string | undefined
  redirectHost: string
  /** Whether the client sends the owner back to this computer (a native app's loopback listener). */
  redirectIsLoopback: boolean
  /** Grantable scopes, and whether each is offered checked (the client asked for it). */
  scopes: Array<{ scope: string, checked: boolean }>
  namespace: string
  /** Whether an owner password is set (otherwise only API tokens sign in). */
  ownerPasswordSet: boolean
  signInWith: 'password' | 'token'
  /** What went wrong with the last post, announced at the top of the form. */
  error: string | undefined
  /** Whether the error is about the credentials typed in (that field is then marked invalid). */
  credentialsRejected: boolean
}

function renderScope ({ scope, checked }: { scope: string, checked: boolean }): string {
  const known = SCOPE_DESCRIPTIONS[scope]
  const text = known === undefined ? '' : `<strong>${escapeHtml(known.name)}</strong>: ${escapeHtml(known.description)}`
  return `
<label class="scope"><input type="checkbox" name="scope" value="${escapeHtml(scope)}"${checked ? ' checked' : ''}>
<span>${text}<code>${escapeHtml(scope)}</code></span></label>`
}

function renderSignIn (model: ConsentPageModel): string {
  const invalid = (field: ConsentPageModel['signInWith']): string =>
    model.credentialsRejected && model.signInWith === field ? ' aria-invalid="true" aria-describedby="error"' : ''
  const focus = (field: ConsentPageModel['signInWith']): string => model.signInWith === field ? ' autofocus' : ''
  const token = `
<label for="token">API token</label>
<input type="password" id="token" name="token" autocomplete="off" spellcheck="false" aria-describedby="token-help"${invalid('token')}${focus('token')}>
<p class="help" id="token-help">A token made with <code>node dist/cli.js token create</code>. The client then gets at most that token's scopes, in that token's namespace.</p>`
  if (!model.ownerPasswordSet) return token
  return `
<label for="password">Owner password</label>
<input type="password" id="password" name="password" autocomplete="current-password"${invalid('password')}${focus('password')}>
<details${model.signInWith === 'token' ? ' open' : ''}><summary>Sign in with an API token instead</summary>${token}</details>`
}

/**
 * The sign-in and consent page: one form, server-rendered, works without JavaScript, usable from
 * 320 px wide. It puts first what lets the owner spot a phishing client: the name is the client's
 * own claim, the host it sends the owner back to is not.
 */
export function renderConsentPage (model: ConsentPageModel): string {
  const client = escapeHtml(model.clientName)
  const redirectNote = model.redirectIsLoopback ? ' <span class="help">(an app on this computer)</span>' : ''
  const describedBy = model.clientUrl === undefined
    ? ''
    : `\n<dt>Described by</dt>\n<dd class="client"><code>${escapeHtml(model.clientUrl)}</code></dd>`
  const title = `Allow ${model.clientName} to use Shared Context?`
  return page(model.error === undefined ? title : `Error: ${title}`, model.nonce, `
<p class="site">Shared Context on <strong>${escapeHtml(model.serverHost)}</strong></p>
<section class="card" aria-labelledby="title">
<h1 id="title">Allow <span class="client">${client}</span> to use your Shared Context?</h1>
<dl class="who">
<dt>After you answer, you are sent to</dt>
<dd><span class="host">${escapeHtml(model.redirectHost)}</span>${redirectNote}</dd>${describedBy}
</dl>
<p class="help">Any client can call itself by any name, but it cannot change where you are sent. Allow only a connection you started yourself, from a client you know: Claude's sends you to <code>claude.ai</code>.</p>
</section>
<form class="card" method="post" action="${escapeHtml(model.action)}">
${model.error === undefined ? '' : `<div class="error" id="error" role="alert">${escapeHtml(model.error)}</div>\n`}<input type="hidden" name="csrf" value="${escapeHtml(model.csrfToken)}">
<fieldset>
<legend>What it may do</legend>${model.scopes.map(renderScope).join('')}
</fieldset>
<div class="field">
<label for="namespace">Namespace</label>
<p class="help" id="namespace-help">The namespace decides which entries the client sees: it reads and writes only the entries in this one. A new name keeps it away from everything else.</p>
<input type="text" id="namespace" name="namespace" value="${escapeHtml(model.namespace)}" autocomplete="off" autocapitalize="none" spellcheck="false" pattern="[A-Za-z0-9_.:\\/\\-]{1,255}" maxlength="255" aria-describedby="namespace-help">
</div>
<fieldset class="sign-in">
<legend>Sign in to allow</legend>${renderSignIn(model)}
</fieldset>
<div class="buttons">
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny" formnovalidate>Deny</button>
</div>
</form>`)
}

/** A page saying the sign-in cannot go on: a bad authorization request (oidc-provider) or a refused form post. */
export function renderErrorPage (error: string, description: string | undefined, nonce = ''): string {
  return page('Sign-in failed', nonce, `
<section class="card" aria-labelledby="title">
<h1 id="title">This sign-in cannot go on</h1>
${description === undefined ? '' : `<p>${escapeHtml(description)}</p>\n`}<p class="help">Start connecting again from your client. If it keeps failing, remove the connector there and add it again.</p>
<p class="help">Error code: <code>${escapeHtml(error)}</code></p>
</section>`)
}

/**
 * Security headers of every page: no framing (clickjacking), no other script or style than the
 * page's own, forms posted only here or — through the redirect that follows — to the client, no
 * Referer to other sites (the page's URL names the sign-in). Same-origin rather than no-referrer:
 * under no-referrer browsers send `Origin: null` with the form post, which the Origin check refuses.
 */
export function pageHeaders (nonce: string, formTargets: string[]): Record<string, string> {
  return {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'same-origin',
    'content-security-policy': [
      "default-src 'none'",
      `style-src 'nonce-${nonce}'`,
      `form-action 'self' ${formTargets.join(' ')}`.trim(),
      "frame-ancestors 'none'",
      "base-uri 'none'"
    ].join('; ')
  }
}
