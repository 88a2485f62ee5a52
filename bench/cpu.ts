import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

// A server's CPU time from /proc/<pid>/stat: user + system time of all its threads (the worker
// threads of libuv, pino or postgres.js included), in clock ticks. Linux only. The database's own
// CPU time is not in it: PostgreSQL's backends are other processes.

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())

/** utime + stime of `pid`, in microseconds. */
export function cpuMicros (pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // Fields after the command name (which may itself hold spaces and parentheses): the 3rd field
  // of the line is the first here, so utime (14th) and stime (15th) are at 11 and 12.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12])
  if (!Number.isFinite(ticks)) throw new Error(`cannot read utime/stime from /proc/${pid}/stat`)
  return ticks * 1_000_000 / TICKS_PER_SECOND
}

export const CPU_TICK_MICROS = 1_000_000 / TICKS_PER_SECOND

/** Read and write system calls made so far by `pid` (all its threads), from /proc/<pid>/io. */
export function syscallCounts (pid: number): { reads: number, writes: number } {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8')
  const field = (name: string): number => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1] ?? Number.NaN)
  return { reads: field('syscr'), writes: field('syscw') }
}
