'use strict'
// run.js drives node-postgres (the npm package pg) for
// test/e2e/node_pg_test.go: it logs in with the spec's connection
// settings, runs the spec's queries in order on one Client, and prints one
// JSON object on stdout saying what the driver saw. It never exits non-zero
// for a refused login or a failed query: the Go test judges those.
//
//   node run.js spec.json
//
// spec.json:
//   {
//     "connection": { "host", "port", "user", "database", "password" },
//     "passwordFrom": { "tokenURL", "clientID", "secret" },  // optional: the
//         password becomes an async function fetching a fresh OIDC token
//     "queries": [ { "name", "text", "values"?, "preparedName"?, "queryMode"? } ]
//   }
const fs = require('fs')
const path = require('path')
const pg = require('pg')

function pgVersion() {
  try {
    return require('pg/package.json').version
  } catch (e) {
    const p = path.join(path.dirname(require.resolve('pg')), '..', 'package.json')
    return JSON.parse(fs.readFileSync(p, 'utf8')).version
  }
}

function describeError(err) {
  if (!err) return null
  const out = { name: err.name, message: err.message }
  for (const k of ['severity', 'code', 'detail', 'hint']) {
    if (err[k] !== undefined) out[k] = err[k]
  }
  return out
}

// fetchToken asks the test's OIDC provider for an access token with the
// client-credentials grant, as an agent refreshing its token would.
async function fetchToken(from) {
  const basic = Buffer.from(encodeURIComponent(from.clientID) + ':' + encodeURIComponent(from.secret)).toString('base64')
  const resp = await fetch(from.tokenURL, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Authorization: 'Basic ' + basic },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'openid' }),
  })
  const body = await resp.json()
  if (!body.access_token) throw new Error('token endpoint: ' + JSON.stringify(body))
  return body.access_token
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
  const report = {
    node: process.version,
    pg: pgVersion(),
    connect: null,
    passwordCalls: 0,
    authRequests: [],
    results: [],
    asyncErrors: [],
    notices: [],
  }
  const conn = Object.assign({ connectionTimeoutMillis: 15000, query_timeout: 20000, ssl: false }, spec.connection)
  if (spec.passwordFrom) {
    conn.password = async () => {
      report.passwordCalls++
      return fetchToken(spec.passwordFrom)
    }
  }
  const client = new pg.Client(conn)
  client.on('error', (err) => report.asyncErrors.push(describeError(err)))
  client.on('notice', (n) => report.notices.push(n.message))
  // Every authentication request the driver answered, in order: sluice
  // asks for the password twice when the target uses SCRAM.
  for (const ev of ['authenticationCleartextPassword', 'authenticationMD5Password', 'authenticationSASL']) {
    client.connection.on(ev, () => report.authRequests.push(ev))
  }
  try {
    await client.connect()
    report.connect = { ok: true }
  } catch (err) {
    report.connect = { ok: false, error: describeError(err) }
    process.stdout.write(JSON.stringify(report) + '\n')
    return
  }
  for (const q of spec.queries || []) {
    const config = { text: q.text, rowMode: 'array' }
    if (q.values) config.values = q.values
    if (q.preparedName) config.name = q.preparedName
    if (q.queryMode) config.queryMode = q.queryMode
    const r = { name: q.name }
    try {
      const res = await client.query(config)
      r.command = res.command
      r.rowCount = res.rowCount
      r.fields = res.fields.map((f) => f.name)
      // Values as node-postgres decoded them (numbers, objects for json,
      // Dates), then JSON-encoded for the test to read.
      r.rows = res.rows
    } catch (err) {
      r.error = describeError(err)
    }
    report.results.push(r)
  }
  try {
    await client.end()
  } catch (err) {
    report.asyncErrors.push(describeError(err))
  }
  process.stdout.write(JSON.stringify(report) + '\n')
}

main().catch((err) => {
  process.stderr.write('run.js: ' + (err && err.stack ? err.stack : String(err)) + '\n')
  process.exit(2)
})
