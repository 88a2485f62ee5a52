import { appendContext } from './append-context.js'
import { changesSince } from './changes-since.js'
import { contextHistory } from './context-history.js'
import { deleteContext } from './delete-context.js'
import { listContext } from './list-context.js'
import { readContext } from './read-context.js'
import { restoreContext } from './restore-context.js'
import { searchContext } from './search-context.js'
import type { ToolDefinition } from './registry.js'
import { writeContext } from './write-context.js'

/** Every tool the server offers, in the order tools/list shows them. */
export const allTools = [
  readContext,
  writeContext,
  appendContext,
  listContext,
  searchContext,
  deleteContext,
  contextHistory,
  restoreContext,
  changesSince
] as unknown as ToolDefinition[]
