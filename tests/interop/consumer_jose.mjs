// A pem directory read the way a Node service reads it with jose: importSPKI for every
// public <kid>.pem, importPKCS8 for active.key, then jwtVerify of a token the test
// signed with the active key (and a token signed here with the imported private key,
// which the test verifies with PyJWT).
//
// stdin: {"alg", "publics": [paths], "active_public", "active_key", "token"}
// stdout: {"imported": n, "payload": {...}, "token": "<signed here>"}
import { readFileSync } from 'node:fs'
import { importPKCS8, importSPKI, jwtVerify, SignJWT } from 'jose'

const job = JSON.parse(readFileSync(0, 'utf8'))
let imported = 0
for (const path of job.publics) {
  await importSPKI(readFileSync(path, 'utf8'), job.alg)
  imported += 1
}
const publicKey = await importSPKI(readFileSync(job.active_public, 'utf8'), job.alg)
const privateKey = await importPKCS8(readFileSync(job.active_key, 'utf8'), job.alg)
const { payload } = await jwtVerify(job.token, publicKey, { algorithms: [job.alg] })
const token = await new SignJWT({ from: 'jose' })
  .setProtectedHeader({ alg: job.alg, kid: job.kid })
  .sign(privateKey)
process.stdout.write(JSON.stringify({ imported, payload, token }))
