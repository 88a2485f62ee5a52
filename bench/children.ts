import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { openSync, closeSync } from 'node:fs'
import { freePort } from '../scripts/free-port.js'
export { freePort }

// The servers under test, each a child process on its own loopback port. Every child is tracked
// so that it is killed however the benchmark ends.

export interface ChildSpec {
  name: string
  cwd: string
  args: string[]
  env: Record<string, string>
  logFile: string
}

export interface Child {
  name: string
  process: ChildProcess
  /** Set once the process has exited. */
  exit: string | undefined
}

/**
 * The node binary the servers run on: BENCH_NODE, or the one running the bench. The image ships a
 * newer Node than a development machine may have (the Dockerfile's NODE_IMAGE), and what the
 * servers cost depends on it; `BENCH_NODE=$(npx -p node@26 which node)` measures that one.
 */
const SERVER_NODE = process.env.BENCH_NODE ?? process.execPath

/** Which Node the servers run on, for the run's header. */
export function serverRuntime (): string {
  const version = SERVER_NODE === process.execPath ? process.version : execFileSync(SERVER_NODE, ['--version'], { encoding: 'utf8' }).trim()
  return `servers on Node ${version}${process.env.BENCH_NODE === undefined ? '' : ' (BENCH_NODE)'}`
}

const children = new Set<Child>()
const KILL_GRACE_MS = 3000

/** A free loopback port (the OS picks one; a small race with other processes is acceptable here). */

export function startChild (spec: ChildSpec): Child {
  const log = openSync(spec.logFile, 'w')
  // A clean environment: nothing from the caller's shell (DATABASE_URL, HOST, ...) leaks into the servers.
  const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...spec.env }
  const child: Child = {
    name: spec.name,
    process: spawn(SERVER_NODE, spec.args, { cwd: spec.cwd, env, stdio: ['ignore', log, log] }),
    exit: undefined
  }
  closeSync(log)
  children.add(child)
  child.process.once('exit', (code, signal) => {
    child.exit = signal === null ? `exit code ${code}` : `signal ${signal}`
    children.delete(child)
  })
  return child
}

export async function stopChild (child: Child): Promise<void> {
  if (child.exit !== undefined) return
  const exited = new Promise<void>((resolve) => child.process.once('exit', () => resolve()))
  child.process.kill('SIGTERM')
  const timer = setTimeout(() => child.process.kill('SIGKILL'), KILL_GRACE_MS)
  await exited
  clearTimeout(timer)
}

export async function stopAllChildren (): Promise<void> {
  await Promise.all([...children].map(stopChild))
}

/** Last resort from process 'exit' (synchronous): no waiting, just SIGKILL. */
export function killAllChildrenNow (): void {
  for (const child of children) child.process.kill('SIGKILL')
}
