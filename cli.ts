import { serve } from './server.js'

const [command = 'serve'] = process.argv.slice(2)

switch (command) {
  case 'serve':
    await serve()
    break
  default:
    process.stderr.write(`Unknown command "${command}". Commands: serve, migrate.\n`)
    process.exit(2)
}
