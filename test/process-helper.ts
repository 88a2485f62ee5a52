import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'

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

/** Waits until `predicate` holds for the output, or fails after `timeoutMs`. */
export async function waitFor (server: RunningServer, predicate: (output: string) => boolean, timeoutMs = 30000): Promise<void> {
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
