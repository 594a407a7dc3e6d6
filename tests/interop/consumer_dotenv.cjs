// What Node's dotenv (the package, not a shell) reads from an env file: stdout is the
// parsed object as JSON. argv[2]: the file.
const fs = require('node:fs')
const dotenv = require('dotenv')

process.stdout.write(JSON.stringify(dotenv.parse(fs.readFileSync(process.argv[2]))))
