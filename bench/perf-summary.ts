import { moduleOfUrl, TOP } from './profile-summary.js'

// Summarises `perf script` output of a server run with `node --perf-basic-prof` (bench/profile.ts,
// BENCH_PROFILE_PERF=1). perf's cpu-clock samples only while the thread runs, so unlike
// --cpu-prof's wall-clock samples nothing here is time spent waiting: on this 2-core machine a
// socket write that wakes the PostgreSQL backend often gives up the core inside the call, and
// --cpu-prof charged that wait to `writeBuffer` (20-30% of its samples in every server).
//
// Each sample is charged to an owner: the garbage collector when a collection is on the stack,
// else the innermost JavaScript frame's package (node_modules/<name>), project file (dist/...) or
// Node's own JavaScript (node:*); the V8 builtins, C++ and kernel code below that frame (property
// lookups, a system call) are its owner's. Samples with no JavaScript frame at all are native
// (libuv's loop; perf -p samples every thread, so V8's optimising compiler and collector threads
// too) or kernel (an interrupt).

// Collection itself, not the heap's allocation paths (Heap::AllocateExternalBackingStore and the like).
const GC_FRAME = /Heap::(CollectGarbage|PerformGarbageCollection|Scavenge)|Scavenger|MarkCompact|GCTracer|Sweeper|ConcurrentMarking|MinorGC/
// `JS:*name file:line:column+0xoffset`; getters ("get length"), and code made by `new Function`, with no file.
const JS_FRAME = /JS:[*~^+]?(.*) (\S*):\d+:\d+(?:\+0x[0-9a-f]+)?$/
/** Frames this close to the leaf decide whether a sample is the collector's. */
const GC_DEPTH = 12

export interface PerfSummaryOptions {
  /** Responses the server gave while perf recorded. */
  responses: number
  /** perf record's -F. */
  frequency: number
  top?: number
}

/** The frames of one sample, innermost first: [symbol, dso]. */
function framesOf (block: string): Array<{ symbol: string, dso: string }> {
  return block.split('\n').slice(1).map((line) => {
    const match = /^\s*[0-9a-f]+ (.*) \(([^)]*)\)\s*$/.exec(line)
    return match === null ? { symbol: line.trim(), dso: '' } : { symbol: match[1] ?? '', dso: match[2] ?? '' }
  })
}

export function summarisePerf (script: string, options: PerfSummaryOptions): string {
  const byOwner = new Map<string, { samples: number, kernel: number }>()
  const byLeaf = new Map<string, number>()
  let samples = 0
  let kernel = 0
  for (const block of script.split(/\n\s*\n/)) {
    const frames = framesOf(block.trim())
    if (frames.length === 0) continue
    samples++
    const inKernel = frames[0]?.dso.includes('kernel') === true
    if (inKernel) kernel++
    let owner: string | undefined
    if (frames.slice(0, GC_DEPTH).some((frame) => GC_FRAME.test(frame.symbol))) owner = '(garbage collector)'
    for (const frame of frames) {
      if (owner !== undefined) break
      const js = JS_FRAME.exec(frame.symbol)
      if (js !== null) owner = moduleOfUrl(js[2] ?? '') ?? '(code made at run time, no file)'
    }
    owner ??= inKernel ? '(kernel, no JavaScript on the stack)' : '(native, no JavaScript on the stack)'
    const entry = byOwner.get(owner) ?? { samples: 0, kernel: 0 }
    entry.samples++
    if (inKernel) entry.kernel++
    byOwner.set(owner, entry)
    const leaf = frames.find((frame) => !frame.dso.includes('kernel'))?.symbol.replace(/\+0x[0-9a-f]+$/, '') ?? '(kernel)'
    byLeaf.set(leaf, (byLeaf.get(leaf) ?? 0) + 1)
  }
  const top = options.top ?? TOP
  const perRequest = (count: number) => count * 1e6 / options.frequency / Math.max(1, options.responses)
  const lines = [
    `${samples} samples at ${options.frequency} Hz over ${options.responses} responses: ${perRequest(samples).toFixed(1)} µs of CPU a request, ` +
      `${perRequest(kernel).toFixed(1)} of it in the kernel`,
    '',
    'CPU µs a request by owner (the innermost JavaScript frame\'s package or file; what it calls below that, kernel included, is its own):',
    ...[...byOwner].sort((x, y) => y[1].samples - x[1].samples).slice(0, top)
      .map(([owner, entry]) => `${perRequest(entry.samples).toFixed(1).padStart(7)}  ${owner}${entry.kernel > 0 ? ` (kernel ${perRequest(entry.kernel).toFixed(1)})` : ''}`),
    '',
    'CPU µs a request by innermost function outside the kernel:',
    ...[...byLeaf].sort((x, y) => y[1] - x[1]).slice(0, top)
      .map(([leaf, count]) => `${perRequest(count).toFixed(1).padStart(7)}  ${leaf}`)
  ]
  return lines.join('\n') + '\n'
}
