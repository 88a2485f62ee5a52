import { Type } from '@sinclair/typebox'
import { startDomainServer, type DomainPrompt, type DomainResource, type DomainServer, type DomainTool } from './domain-server.js'

/** The HR upstream of the gateway tests (2025 protocol line): read-only, destructive and slow tools. */

export const EMPLOYEES = [
  { id: 'e1', name: 'Ada Lovelace', department: 'engineering' },
  { id: 'e2', name: 'Grace Hopper', department: 'engineering' },
  { id: 'e3', name: 'Frances Allen', department: 'research' }
]

function abortable (ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms)
    signal.addEventListener('abort', () => {
      clearTimeout(timer)
      reject(new Error('cancelled'))
    }, { once: true })
  })
}

export const HR_TOOLS: DomainTool[] = [
  {
    name: 'list_employees',
    title: 'List employees',
    description: 'Lists the employees, optionally of one department.',
    inputSchema: Type.Object({ department: Type.Optional(Type.String()) }),
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    handler: async (args, ctx) => ({ employees: EMPLOYEES.filter((employee) => args.department === undefined || employee.department === args.department), authorization: ctx.headers.authorization ?? null })
  },
  {
    name: 'delete_employee',
    title: 'Delete an employee',
    description: 'Deletes an employee record.',
    inputSchema: Type.Object({ id: Type.String() }, { required: ['id'] }),
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
    handler: async (args) => ({ deleted: args.id })
  },
  {
    name: 'add_note',
    title: 'Add a note',
    description: 'Adds a note to an employee record (each call adds one more).',
    inputSchema: Type.Object({ id: Type.String(), text: Type.String() }, { required: ['id', 'text'] }),
    annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    handler: async (args) => ({ noted: args.id })
  },
  {
    name: 'slow_report',
    title: 'Build a slow report',
    description: 'Builds a report in `steps` steps of `step_ms` each, reporting progress after every step.',
    inputSchema: Type.Object({ steps: Type.Integer({ minimum: 1, maximum: 1000 }), step_ms: Type.Integer({ minimum: 1, maximum: 10000 }) }, { required: ['steps', 'step_ms'] }),
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    handler: async (args, ctx) => {
      const steps = args.steps as number
      for (let step = 1; step <= steps; step++) {
        await abortable(args.step_ms as number, ctx.signal)
        await ctx.progress(step, steps, `step ${step} of ${steps}`)
      }
      await ctx.log(`report of ${steps} steps done`)
      return { steps }
    }
  }
]

/** The handbook (static) and one record per employee (a template). */
export const HR_RESOURCES: DomainResource[] = [
  { name: 'handbook', uri: 'hr://handbook', text: () => 'Be kind. Ship on Thursdays.' },
  { name: 'salaries', uri: 'hr://salaries', text: () => 'e1: 100, e2: 100, e3: 100' },
  { name: 'employee', uriTemplate: 'hr://employees/{id}', text: (uri) => `record of ${uri.slice('hr://employees/'.length)}` }
]

export const HR_PROMPTS: DomainPrompt[] = [
  { name: 'onboarding', description: 'Onboard a new hire.', text: 'Welcome the new hire.' },
  { name: 'termination', description: 'Let someone go.', text: 'Plan the exit.' }
]

export function startHr (port?: number): Promise<DomainServer> {
  return startDomainServer({ name: 'hr', era: '2025', tools: HR_TOOLS, resources: HR_RESOURCES, prompts: HR_PROMPTS, ...(port !== undefined && { port }) })
}
