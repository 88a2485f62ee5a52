import { ROOT } from './servers.js'

// A .cpuprofile (node --cpu-prof) summed up: self time by function and by package, total time by
// function. bench/profile.ts (the context tools' mix) and bench/search/run.ts (BENCH_SEARCH_PROFILE) print it.

export const TOP = Number(process.env.BENCH_PROFILE_TOP ?? 30)

interface CallFrame { functionName: string, url: string, lineNumber: number, columnNumber: number }
interface ProfileNode { id: number, callFrame: CallFrame, hitCount?: number, children?: number[] }
export interface CpuProfile { nodes: ProfileNode[], startTime: number, endTime: number, samples: number[], timeDeltas: number[] }

function shortUrl (url: string): string {
  if (url === '') return ''
  const path = url.replace(/^file:\/\//, '')
  const modules = path.lastIndexOf('/node_modules/')
  if (modules !== -1) return path.slice(modules + '/node_modules/'.length)
  return path.startsWith(ROOT) ? path.slice(ROOT.length) : path
}

/**
 * The package (or project file) code at `url` belongs to: `fastify`, `@modelcontextprotocol/server`,
 * `dist/plugins/mcp.js`, `(node core)`; undefined for code with no file. Also bench/perf-summary.ts's.
 */
export function moduleOfUrl (url: string): string | undefined {
  const short = shortUrl(url)
  if (short === '') return undefined
  if (short.startsWith('node:')) return '(node core)'
  if (url.includes('/node_modules/')) {
    const parts = short.split('/')
    return parts[0]?.startsWith('@') === true ? `${parts[0]}/${parts[1] ?? ''}` : parts[0] ?? short
  }
  return short
}

function moduleOf (frame: CallFrame): string {
  return moduleOfUrl(frame.url) ?? `(${frame.functionName === '' ? 'native' : frame.functionName})`
}

function frameName (frame: CallFrame): string {
  const where = shortUrl(frame.url)
  return `${frame.functionName === '' ? '(anonymous)' : frame.functionName}${where === '' ? '' : ` ${where}:${frame.lineNumber + 1}`}`
}

function rows (totals: Map<string, number>, all: number, top: number): string[] {
  return [...totals.entries()].sort((x, y) => y[1] - x[1]).slice(0, top)
    .map(([name, us]) => `${(100 * us / all).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${name}`)
}

/** Self time by function and by package, total time by function (each function counted once per sample however deep it recurses). */
export function summariseProfile (profile: CpuProfile, top = TOP): string {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
  const self = new Map<string, number>()
  const byModule = new Map<string, number>()
  const total = new Map<string, number>()
  let all = 0
  profile.samples.forEach((id, index) => {
    const us = profile.timeDeltas[index + 1] ?? profile.timeDeltas[index] ?? 0
    const node = byId.get(id)
    if (node === undefined) return
    all += us
    const name = frameName(node.callFrame)
    self.set(name, (self.get(name) ?? 0) + us)
    const module = moduleOf(node.callFrame)
    byModule.set(module, (byModule.get(module) ?? 0) + us)
    const seen = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const frame = byId.get(at)?.callFrame
      if (frame === undefined) break
      const key = frameName(frame)
      if (seen.has(key)) continue
      seen.add(key)
      total.set(key, (total.get(key) ?? 0) + us)
    }
  })
  return [
    `${(all / 1000).toFixed(0)} ms sampled`,
    '', `Self time by function (top ${top}):`, ...rows(self, all, top),
    '', 'Self time by package or project file:', ...rows(byModule, all, top),
    '', `Total time by function (top ${top}, idle and the program root included):`, ...rows(total, all, top),
    ''
  ].join('\n')
}
