import { Type } from '@sinclair/typebox'
import { startDomainServer, type DomainServer, type DomainTool } from './domain-server.js'

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

export function startFinance (port?: number): Promise<DomainServer> {
  return startDomainServer({ name: 'finance', era: '2026-07-28', tools: FINANCE_TOOLS, ...(port !== undefined && { port }) })
}
