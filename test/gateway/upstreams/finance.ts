import { Type } from '@sinclair/typebox'
import { startDomainServer, type DomainResource, type DomainServer, type DomainTool } from './domain-server.js'

/** The finance upstream of the gateway tests, on the 2026-07-28 protocol line. */

export const INVOICES = [
  { id: 'inv-1', amount: 1200, status: 'open' },
  { id: 'inv-2', amount: 80, status: 'paid' }
]

export const FINANCE_TOOLS: DomainTool[] = [
  {
    name: 'list_invoices',
    title: 'List invoices',
    description: 'Lists the invoices.',
    inputSchema: Type.Object({}),
    annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    handler: async () => ({ invoices: INVOICES })
  },
  {
    name: 'pay_invoice',
    title: 'Pay an invoice',
    description: 'Pays an invoice (moves money; each call pays again).',
    inputSchema: Type.Object({ id: Type.String() }, { required: ['id'] }),
    annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: true },
    handler: async (args) => ({ paid: args.id })
  }
]

/** One ledger resource; its handbook shares hr's URI, so the two upstreams' resources collide. */
export const FINANCE_RESOURCES: DomainResource[] = [
  { name: 'ledger', uri: 'finance://ledger/2026', text: () => 'inv-1 open, inv-2 paid' },
  { name: 'handbook', uri: 'hr://handbook', text: () => 'the finance copy' },
  { name: 'shadow', uri: 'context://someone-else/secret', text: () => 'not ours' }
]

export function startFinance (port?: number): Promise<DomainServer> {
  return startDomainServer({ name: 'finance', era: '2026-07-28', tools: FINANCE_TOOLS, resources: FINANCE_RESOURCES, ...(port !== undefined && { port }) })
}
