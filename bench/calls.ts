import { randomBytes, randomInt } from 'node:crypto'

// The MCP traffic of the benchmark: which tools/call to send, and what counts as a right answer.

export type ToolName = 'read_context' | 'write_context'

export interface Call {
  id: number
  tool: ToolName
  key: string
  body: string
}

export type Verdict = 'ok' | 'non2xx' | 'bad-body' | 'tool-error'

export interface Check {
  verdict: Verdict
  /** Why it is not ok (for the first few samples in the report). */
  detail?: string
}

export const KEY_PREFIX = 'bench/key-'
export const CONTENT_BYTES = 1024

export function keyName (index: number): string {
  return `${KEY_PREFIX}${index}`
}

/** ~1 KiB of random ASCII text (ASCII keeps byte and character counts equal). */
export function randomContent (bytes = CONTENT_BYTES): string {
  const words: string[] = []
  let length = 0
  while (length < bytes) {
    const word = randomBytes(6).toString('base64url')
    words.push(word)
    length += word.length + 1
  }
  return words.join(' ').slice(0, bytes)
}

let nextId = 1

export function makeCall (keys: number, writeRatio: number): Call {
  const id = nextId++
  const key = keyName(randomInt(keys))
  const write = Math.random() < writeRatio
  const tool: ToolName = write ? 'write_context' : 'read_context'
  const args = write ? { key, content: randomContent() } : { key }
  const body = JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: tool, arguments: args } })
  return { id, tool, key, body }
}

type Json = Record<string, unknown>

function isObject (value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** The JSON-RPC message of the answer: the body itself, or for SSE the data line that answers `id`. */
function messageOf (body: string, contentType: string, id: number): unknown {
  if (!contentType.startsWith('text/event-stream')) return JSON.parse(body)
  for (const line of body.split('\n')) {
    if (!line.startsWith('data:')) continue
    const message: unknown = JSON.parse(line.slice(5))
    if (isObject(message) && message.id === id) return message
  }
  throw new Error('no SSE data line answers this id')
}

/** What is wrong with the answer's envelope, if anything; `result` is the tool result when nothing is. */
function envelopeProblem (message: unknown, id: number): string | Json {
  if (!isObject(message) || message.jsonrpc !== '2.0') return 'not a JSON-RPC 2.0 message'
  if (message.id !== id) return `id ${JSON.stringify(message.id)} instead of ${id}`
  const result = message.result
  if (!isObject(result)) return 'no result'
  const content = result.content
  if (!Array.isArray(content) || !isObject(content[0]) || content[0].type !== 'text' || typeof content[0].text !== 'string') {
    return 'no text content block'
  }
  if (!isObject(result.structuredContent)) return 'no structuredContent'
  return result
}

function outputProblem (output: Json, call: Call): string | undefined {
  if (output.key !== call.key || typeof output.version !== 'number') return 'structuredContent lacks key or version'
  if (call.tool === 'read_context' && typeof output.content !== 'string') return 'read result without content'
  if (call.tool === 'write_context' && output.action !== 'created' && output.action !== 'updated') return 'write result without action'
  return undefined
}

export function checkAnswer (status: number, body: string, contentType: string, call: Call): Check {
  const excerpt = body.slice(0, 300)
  if (status < 200 || status > 299) return { verdict: 'non2xx', detail: `HTTP ${status}: ${excerpt}` }
  let message: unknown
  try {
    message = messageOf(body, contentType, call.id)
  } catch (error) {
    return { verdict: 'bad-body', detail: `${(error as Error).message}: ${excerpt}` }
  }
  const result = envelopeProblem(message, call.id)
  if (typeof result === 'string') return { verdict: 'bad-body', detail: `${result}: ${excerpt}` }
  if (result.isError === true) return { verdict: 'tool-error', detail: excerpt }
  const problem = outputProblem(result.structuredContent as Json, call)
  return problem === undefined ? { verdict: 'ok' } : { verdict: 'bad-body', detail: `${problem}: ${excerpt}` }
}
