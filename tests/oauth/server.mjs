// An OAuth 2.1 authorization server for the tests and `mcp-authz demo --oauth`: the real,
// OpenID-certified oidc-provider, configured from the command line. Nothing here issues or
// validates a token by itself; oidc-provider does.
//
//   node server.mjs --issuer http://127.0.0.1:9400 --port 9400 \
//     --resource http://127.0.0.1:10000/mcp [--resource URI ...] \
//     [--scope mcp:tools --scope images:generate] [--user alice:password:group1,group2 ...] \
//     [--client id:secret:scope1,scope2 ...] [--alg RS256] [--access-token-ttl 600] \
//     [--admin-port PORT]
//
// - Resource indicators (RFC 8707): every access token is a JWT for one resource given with
//   --resource; its audience is that resource, its scopes the requested ones the resource has.
// - Dynamic client registration (RFC 7591) is open, and a registered `scope` restricts
//   nothing (see unrestrictedRegistration). Grants: authorization code with PKCE
//   (S256, required) and client credentials. --client adds a registered confidential client
//   for client credentials (its scopes after the second colon).
// - Sign-in: /interaction/<uid> shows a form; a --user's name and password sign in and
//   consent to the requested scopes at once. Access tokens carry the user's groups (`groups`).
// - Keys: one RS256 and one ES256 key, generated at start. The admin port (loopback only)
//   rotates them and sets per-client token settings:
//     POST /rotate                 {"keep_previous": true}   new keys sign; old ones published
//                                                            while keep_previous is true
//     POST /clients/<id>/settings  {"alg": "ES256", "access_token_ttl": 2}
//     GET  /healthz
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';
// The provider's own in-memory adapter; built with a model name only, it keeps everything in
// one module-wide store, so clients, sessions and grants outlive a key rotation (which builds
// a new Provider with the new keys).
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const OIDC_SCOPES = ['openid', 'offline_access'];

function fail(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(2);
}

const { values: options } = parseArgs({
  options: {
    issuer: { type: 'string' },
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    resource: { type: 'string', multiple: true, default: [] },
    scope: { type: 'string', multiple: true, default: ['mcp:tools', 'images:generate'] },
    user: { type: 'string', multiple: true, default: [] },
    client: { type: 'string', multiple: true, default: [] },
    alg: { type: 'string', default: 'RS256' },
    'access-token-ttl': { type: 'string', default: '600' },
    'admin-port': { type: 'string' },
  },
  strict: true,
});

if (!options.issuer) fail('--issuer is required');
if (!options.port) fail('--port is required');
if (options.resource.length === 0) fail('at least one --resource is required');
if (!['RS256', 'ES256'].includes(options.alg)) fail('--alg must be RS256 or ES256');

const resourceScopes = options.scope.join(' ');
const defaultTtl = Number.parseInt(options['access-token-ttl'], 10);
if (!(defaultTtl > 0)) fail('--access-token-ttl must be a positive number of seconds');

const users = new Map();
for (const spec of options.user) {
  const [name, password, ...rest] = spec.split(':');
  const groups = rest.join(':');
  if (!name || !password) fail(`--user ${spec}: expected name:password[:group,group]`);
  users.set(name, { password, groups: groups ? groups.split(',') : [] });
}

const staticClients = options.client.map((spec) => {
  const [clientId, secret, ...rest] = spec.split(':');
  const scopes = rest.join(':');
  if (!clientId || !secret) fail(`--client ${spec}: expected id:secret[:scope,scope]`);
  return {
    client_id: clientId,
    client_secret: secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: scopes ? scopes.split(',').join(' ') : resourceScopes,
  };
});

/** Per-client token settings set through the admin port: {alg, access_token_ttl}. */
const clientSettings = new Map();

function generateKeys() {
  const stamp = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return [
    { ...rsa.export({ format: 'jwk' }), kid: `rs256-${stamp}`, alg: 'RS256', use: 'sig' },
    { ...ec.export({ format: 'jwk' }), kid: `es256-${stamp}`, alg: 'ES256', use: 'sig' },
  ];
}

let signingKeys = generateKeys();
let previousKeys = [];
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

function requestedResources(params) {
  const { resource } = params;
  if (Array.isArray(resource)) return resource;
  return resource ? [resource] : [];
}

function buildProvider() {
  const configuration = {
    adapter: (model) => new MemoryAdapter(model),
    jwks: { keys: [...signingKeys, ...previousKeys] },
    cookies: { keys: cookieKeys },
    clients: staticClients,
    responseTypes: ['code'],
    scopes: [...OIDC_SCOPES, ...options.scope],
    claims: { openid: ['sub'] },
    pkce: { required: () => true },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
      AuthorizationCode: 60,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 3600,
    },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (_ctx, _client, oneOf) => oneOf ?? undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resourceIndicator, client) => {
          if (!options.resource.includes(resourceIndicator)) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          const settings = clientSettings.get(client.clientId) ?? {};
          return {
            scope: resourceScopes,
            audience: resourceIndicator,
            accessTokenTTL: settings.access_token_ttl ?? defaultTtl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: settings.alg ?? options.alg } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => {
      const user = token.accountId ? users.get(token.accountId) : undefined;
      return user ? { groups: user.groups } : undefined;
    },
    findAccount: (_ctx, accountId) => {
      if (!users.has(accountId)) return undefined;
      return { accountId, claims: () => ({ sub: accountId }) };
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    loadExistingGrant: async (ctx) => {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      return grantId ? ctx.oidc.provider.Grant.find(grantId) : undefined;
    },
  };
  const built = new Provider(options.issuer, configuration);
  built.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
  return built;
}

let provider = buildProvider();

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendHtml(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><title>Sign in</title></head><body>${body}</body></html>`);
}

function loginPage(uid, details, message = '') {
  const { params } = details;
  const note = message ? `<p class="error">${escapeHtml(message)}</p>` : '';
  return `<h1>Sign in</h1>
<p>Client <code>${escapeHtml(params.client_id)}</code> asks for <code>${escapeHtml(params.scope ?? '')}</code>
on <code>${escapeHtml(requestedResources(params).join(' '))}</code>.</p>${note}
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>User <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in and allow</button>
</form>`;
}

/** Sign the user in and consent to what the client asked for (scopes, resources), at once. */
async function finishLogin(req, res, details, accountId) {
  const { params, prompt } = details;
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
  } else {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  // The provider counts every configured scope as an OpenID scope and asks for the resource's
  // scopes per resource: grant what was requested both ways, and whatever it still misses.
  const requested = (params.scope ?? '').split(' ').filter(Boolean);
  const resourceScoped = requested.filter((scope) => options.scope.includes(scope));
  if (requested.length) grant.addOIDCScope(requested.join(' '));
  for (const resource of requestedResources(params)) {
    if (resourceScoped.length) grant.addResourceScope(resource, resourceScoped.join(' '));
  }
  const missing = prompt.details ?? {};
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(resource, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

async function interaction(req, res, url) {
  const match = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!match) return false;
  const [, uid, login] = match;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    sendHtml(res, 400, `<h1>Sign-in expired</h1><p>${escapeHtml(err.message)}</p>`);
    return true;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, '<h1>Sign-in mismatch</h1>');
    return true;
  }
  if (req.method === 'GET' && !login) {
    sendHtml(res, 200, loginPage(uid, details));
    return true;
  }
  if (req.method === 'POST' && login) {
    const form = new URLSearchParams(await readBody(req));
    const name = form.get('username') ?? '';
    const user = users.get(name);
    const given = Buffer.from(form.get('password') ?? '');
    const expected = Buffer.from(user?.password ?? '');
    const matches = user && given.length === expected.length
      && crypto.timingSafeEqual(given, expected);
    if (!matches) {
      sendHtml(res, 401, loginPage(uid, details, 'Unknown user or wrong password.'));
      return true;
    }
    await finishLogin(req, res, details, name);
    return true;
  }
  res.writeHead(405).end();
  return true;
}

/**
 * A dynamically registered client is not held to the `scope` it registered with: the MCP
 * client registers with the scopes of its first challenge and later steps up, with the same
 * registration, to the scopes a 403 insufficient_scope names. What a token can carry is
 * still bounded by the resource's scopes. (oidc-provider reads an already-read body from
 * `req.body`.)
 */
async function unrestrictedRegistration(req) {
  const text = await readBody(req);
  try {
    const metadata = JSON.parse(text);
    if (metadata && typeof metadata === 'object') delete metadata.scope;
    req.body = metadata;
  } catch {
    req.body = text;
  }
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, options.issuer);
    if (url.pathname.startsWith('/interaction/')) {
      if (await interaction(req, res, url)) return;
    }
    if (req.method === 'POST' && url.pathname === '/reg') await unrestrictedRegistration(req);
    provider.callback()(req, res);
  } catch (err) {
    process.stderr.write(`error: ${err.stack}\n`);
    if (!res.headersSent) res.writeHead(500).end();
  }
});

function publicKids() {
  return [...signingKeys, ...previousKeys].map((key) => key.kid);
}

async function admin(req, res) {
  const url = new URL(req.url, 'http://admin');
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  let body = {};
  if (req.method === 'POST') {
    const text = await readBody(req);
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      reply(400, { error: 'body is not JSON' });
      return;
    }
  }
  if (req.method === 'GET' && url.pathname === '/healthz') {
    reply(200, { issuer: options.issuer, kids: publicKids() });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/rotate') {
    previousKeys = body.keep_previous ? signingKeys : [];
    signingKeys = generateKeys();
    provider = buildProvider();
    reply(200, { signing: signingKeys.map((key) => key.kid), published: publicKids() });
    return;
  }
  const settings = url.pathname.match(/^\/clients\/([^/]+)\/settings$/);
  if (req.method === 'POST' && settings) {
    const clientId = decodeURIComponent(settings[1]);
    const { alg, access_token_ttl: ttl } = body;
    if (alg !== undefined && !['RS256', 'ES256'].includes(alg)) {
      reply(400, { error: 'alg must be RS256 or ES256' });
      return;
    }
    if (ttl !== undefined && !(Number.isInteger(ttl) && ttl > 0)) {
      reply(400, { error: 'access_token_ttl must be a positive integer' });
      return;
    }
    clientSettings.set(clientId, { ...clientSettings.get(clientId), ...body });
    reply(200, { client_id: clientId, settings: clientSettings.get(clientId) });
    return;
  }
  reply(404, { error: 'not found' });
}

server.listen(Number.parseInt(options.port, 10), options.host, () => {
  process.stdout.write(`authorization server ${options.issuer} listening on ${options.host}:${options.port}\n`);
});

if (options['admin-port']) {
  http.createServer((req, res) => {
    admin(req, res).catch((err) => {
      process.stderr.write(`admin error: ${err.stack}\n`);
      if (!res.headersSent) res.writeHead(500).end();
    });
  }).listen(Number.parseInt(options['admin-port'], 10), '127.0.0.1');
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
