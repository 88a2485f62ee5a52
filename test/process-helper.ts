import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

const root = fileURLToPath(new URL('..', import.meta.url))

export interface RunningServer {
  child: ChildProcess
  stdout: () => string
  stderr: () => string
  /** Resolves with the exit code (null if killed by a signal) once the process has ended. */
  exited: Promise<number | null>
}

/** Starts server.ts in a child process with exactly this environment (plus PATH). */
export function startServer (env: Record<string, string>): RunningServer {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server.ts'], {
    cwd: root,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  let err = ''
  child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { err += chunk.toString() })
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  return { child, stdout: () => out, stderr: () => err, exited }
}

/**
 * Waits until `predicate` holds for the output, or fails after `timeoutMs`. A bound for a hung
 * server, not a speed check: on two busy cores a child's start (tsx compiling, the embedded
 * database loading its data folder) has taken over 30 s.
 */
export async function waitFor (server: RunningServer, predicate: (output: string) => boolean, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!predicate(server.stdout() + server.stderr())) {
    if (server.child.exitCode !== null) throw new Error(`server exited (${server.child.exitCode}) early:\n${server.stdout()}\n${server.stderr()}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for the server:\n${server.stdout()}\n${server.stderr()}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export function servingUrl (server: RunningServer): string {
  const match = /serving MCP at (\S+)/.exec(server.stdout())
  if (match?.[1] === undefined) throw new Error('no serving line')
  return match[1]
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

const run = promisify(execFile)

/** Runs cli.ts in a child process with exactly this environment (plus PATH); a failure is a result, not a throw. */
export async function runCli (env: Record<string, string>, ...args: string[]): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', 'cli.ts', ...args], { cwd: root, env: { PATH: process.env.PATH ?? '', ...env } })
    return { code: 0, stdout, stderr }
  } catch (error) {
    const failed = error as CliResult
    return { code: failed.code, stdout: failed.stdout, stderr: failed.stderr }
  }
}

/** One 2025-era tools/call over real HTTP, as a client on the network sends it. */
export async function callToolOverHttp (url: string, token: string, name: string, args: Record<string, unknown>) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name, arguments: args } })
  })
  return { status: response.status, body: await response.json() as { result?: { isError?: boolean, structuredContent: Record<string, unknown> } } }
}
