import http from 'node:http'
import https from 'node:https'
import { Readable } from 'node:stream'

/**
 * The `fetch` the SDK's transport uses for an upstream: node:http over a keep-alive agent of the
 * upstream's own. The global fetch builds a Request, clones signals and runs the whole fetch
 * algorithm for each message; profiled, that was the largest share of the gateway's CPU per
 * federated call. Requests it cannot send as is (a Request object, a body that is no string) go to
 * the global fetch. Failures to reach the upstream are thrown as the global fetch throws them
 * (TypeError "fetch failed", the socket's error as the cause), so they are classified alike.
 */
export function createUpstreamFetch (): { fetch: typeof fetch, close: () => void } {
  const agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) }
  const upstreamFetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const body = init?.body
    if (input instanceof Request || (body !== undefined && body !== null && typeof body !== 'string')) return await fetch(input, init)
    const url = typeof input === 'string' ? new URL(input) : input
    const headers: Record<string, string> = {}
    new Headers(init?.headers).forEach((value, name) => { headers[name] = value })
    const secure = url.protocol === 'https:'
    return await new Promise<Response>((resolve, reject) => {
      const request = (secure ? https : http).request(url, {
        method: init?.method ?? 'GET',
        headers,
        agent: secure ? agents.https : agents.http,
        ...(init?.signal !== undefined && init.signal !== null && { signal: init.signal })
      })
      request.once('error', (error) => {
        reject(error.name === 'AbortError' ? error : new TypeError('fetch failed', { cause: error }))
      })
      request.once('response', (response) => {
        const status = response.statusCode ?? 500
        const responseHeaders = new Headers()
        for (const [name, value] of Object.entries(response.headers)) {
          if (value === undefined) continue
          for (const one of Array.isArray(value) ? value : [value]) responseHeaders.append(name, one)
        }
        const init = { status, statusText: response.statusMessage ?? '', headers: responseHeaders }
        if (status === 101 || status === 204 || status === 205 || status === 304) {
          response.resume()
          resolve(new Response(null, init))
          return
        }
        // An SSE answer streams (progress, requests of the upstream); a JSON one is read whole here,
        // which spares it the web stream the SDK would read it through.
        if (!/^application\/json\s*(;|$)/i.test(response.headers['content-type'] ?? '')) {
          resolve(new Response(Readable.toWeb(response) as ReadableStream<Uint8Array>, init))
          return
        }
        const chunks: Buffer[] = []
        response.on('data', (chunk: Buffer) => chunks.push(chunk))
        response.once('end', () => resolve(new Response(Buffer.concat(chunks), init)))
        response.once('close', () => {
          if (!response.complete) reject(new TypeError('terminated'))
        })
        response.once('error', (error) => reject(error.name === 'AbortError' ? error : new TypeError('terminated', { cause: error })))
      })
      request.end(body ?? undefined)
    })
  }
  return {
    fetch: upstreamFetch as typeof fetch,
    close: () => {
      agents.http.destroy()
      agents.https.destroy()
    }
  }
}
