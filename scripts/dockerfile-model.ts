import { DockerfileParser, type Instruction } from 'dockerfile-ast'

/**
 * The Dockerfile as the checks need it: build stages, each with the steps that change files or the
 * environment, and the final settings (user, command, health check, volumes, ports). Parsed with
 * dockerfile-ast (the parser behind dockerfile-utils); shared by lint-dockerfile.ts and
 * check-image-steps.ts, so the two read the file the same way.
 */
export type Step =
  | { keyword: 'WORKDIR', line: number, path: string }
  | { keyword: 'ENV', line: number, vars: Record<string, string> }
  | { keyword: 'COPY', line: number, from: string | undefined, sources: string[], dest: string, flags: string[] }
  | { keyword: 'RUN', line: number, command: string, flags: string[] }

export interface HealthCheck {
  line: number
  none: boolean
  options: Record<string, string>
  /** Exec form only; undefined for the shell form. */
  command: string[] | undefined
}

export interface Stage {
  name: string | undefined
  /** The image reference with the ARGs declared before the first FROM resolved. */
  image: string
  line: number
  steps: Step[]
  /** ENV as it stands at the end of the stage. */
  env: Record<string, string>
  workdir: string
  user: string | undefined
  /** Exec form only; undefined when CMD is missing or in shell form (see cmdShellForm). */
  cmd: string[] | undefined
  cmdShellForm: boolean
  entrypoint: boolean
  healthcheck: HealthCheck | undefined
  volumes: string[]
  exposed: string[]
  stopSignal: string | undefined
  /** Instructions the models above do not cover (ADD, SHELL, ONBUILD, ...), by keyword and line. */
  others: Array<{ keyword: string, line: number, args: string }>
}

export interface DockerfileModel {
  /** ARGs declared before the first FROM, with their defaults. */
  args: Record<string, string>
  stages: Stage[]
}

function lineOf (instruction: Instruction): number {
  return instruction.getRange().start.line + 1
}

/** The arguments as written, continuation lines joined. */
function argumentsText (instruction: Instruction): string {
  return (instruction.getArgumentsContent() ?? '').replace(/\\\r?\n\s*/g, '').trim()
}

function flagsOf (instruction: Instruction): Array<{ name: string, value: string | null }> {
  const withFlags = instruction as Instruction & { getFlags?: () => Array<{ getName: () => string, getValue: () => string | null }> }
  return (withFlags.getFlags?.() ?? []).map((flag) => ({ name: flag.getName(), value: flag.getValue() }))
}

/** Text after the flags (`--from=build a b` -> `a b`). */
function withoutFlags (text: string): string {
  return text.replace(/^(?:--\S+\s+)*/, '')
}

function jsonArray (text: string): string[] | undefined {
  if (!text.startsWith('[')) return undefined
  try {
    const value: unknown = JSON.parse(text)
    return Array.isArray(value) && (value as unknown[]).every((item) => typeof item === 'string') ? value as string[] : undefined
  } catch {
    return undefined
  }
}

function words (text: string): string[] {
  return text.split(/\s+/).filter((word) => word !== '')
}

function propertiesOf (instruction: Instruction): Record<string, string> {
  const vars: Record<string, string> = {}
  const withProperties = instruction as Instruction & { getProperties?: () => Array<{ getName: () => string, getUnescapedValue: () => string | null }> }
  for (const property of withProperties.getProperties?.() ?? []) vars[property.getName()] = property.getUnescapedValue() ?? ''
  return vars
}

function resolveArgs (text: string, args: Record<string, string>): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (whole, braced: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare ?? ''
    return args[name] ?? whole
  })
}

export function parseDockerfile (text: string): DockerfileModel {
  const dockerfile = DockerfileParser.parse(text)
  const args: Record<string, string> = {}
  const stages: Stage[] = []
  let stage: Stage | undefined

  for (const instruction of dockerfile.getInstructions()) {
    const keyword = instruction.getKeyword().toUpperCase()
    const line = lineOf(instruction)
    const content = argumentsText(instruction)
    if (keyword === 'FROM') {
      const parts = words(withoutFlags(content))
      const asIndex = parts.findIndex((part) => part.toUpperCase() === 'AS')
      stage = {
        name: asIndex === -1 ? undefined : parts[asIndex + 1],
        image: resolveArgs(parts[0] ?? '', args),
        line,
        steps: [],
        env: {},
        workdir: '/',
        user: undefined,
        cmd: undefined,
        cmdShellForm: false,
        entrypoint: false,
        healthcheck: undefined,
        volumes: [],
        exposed: [],
        stopSignal: undefined,
        others: []
      }
      stages.push(stage)
      continue
    }
    if (stage === undefined) {
      if (keyword === 'ARG') Object.assign(args, propertiesOf(instruction))
      continue
    }
    const flags = flagsOf(instruction)
    switch (keyword) {
      case 'ARG':
        break
      case 'WORKDIR': {
        const path = content.startsWith('/') ? content : `${stage.workdir.replace(/\/$/, '')}/${content}`
        stage.workdir = path
        stage.steps.push({ keyword, line, path })
        break
      }
      case 'ENV': {
        const vars = propertiesOf(instruction)
        Object.assign(stage.env, vars)
        stage.steps.push({ keyword, line, vars })
        break
      }
      case 'COPY': {
        const rest = withoutFlags(content)
        const paths = jsonArray(rest) ?? words(rest)
        const dest = paths.pop() ?? ''
        stage.steps.push({
          keyword,
          line,
          from: flags.find((flag) => flag.name === 'from')?.value ?? undefined,
          sources: paths,
          dest,
          flags: flags.map((flag) => flag.name)
        })
        break
      }
      case 'RUN':
        stage.steps.push({ keyword, line, command: withoutFlags(content), flags: flags.map((flag) => flag.name) })
        break
      case 'USER':
        stage.user = content
        break
      case 'CMD': {
        const exec = jsonArray(content)
        stage.cmd = exec
        stage.cmdShellForm = exec === undefined
        break
      }
      case 'ENTRYPOINT':
        stage.entrypoint = true
        break
      case 'HEALTHCHECK': {
        const rest = withoutFlags(content)
        const options: Record<string, string> = {}
        for (const flag of flags) options[flag.name] = flag.value ?? ''
        const none = rest.toUpperCase() === 'NONE'
        const command = /^CMD\s+/i.test(rest) ? jsonArray(rest.replace(/^CMD\s+/i, '')) : undefined
        stage.healthcheck = { line, none, options, command }
        break
      }
      case 'VOLUME':
        stage.volumes.push(...(jsonArray(content) ?? words(content)))
        break
      case 'EXPOSE':
        stage.exposed.push(...words(content))
        break
      case 'STOPSIGNAL':
        stage.stopSignal = content
        break
      default:
        stage.others.push({ keyword, line, args: content })
    }
  }
  return { args, stages }
}

/** The stage `docker build` produces without --target: the last one. */
export function finalStage (model: DockerfileModel): Stage {
  const last = model.stages.at(-1)
  if (last === undefined) throw new Error('the Dockerfile has no FROM')
  return last
}
