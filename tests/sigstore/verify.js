// Test-only: check a Sigstore bundle with the npm Sigstore verifier, independently of our code.
// Usage: node verify.js PUBLIC_KEY_PEM BUNDLE_JSON
// An empty trusted root, a key finder returning our public key, and the transparency-log, CT
// and timestamp thresholds at 0: a key-only bundle verified fully offline. Prints "OK" and the
// DSSE payload (base64) on success; the verifier does not bind the statement's subject, so
// the caller checks it. On failure: one line on stderr, exit 1.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

const [keyPath, bundlePath] = process.argv.slice(2);
try {
  const key = crypto.createPublicKey(fs.readFileSync(keyPath));
  const json = JSON.parse(fs.readFileSync(bundlePath, 'utf8'));
  const bundle = bundleFromJSON(json);
  const trust = toTrustMaterial(
    { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] },
    () => ({ publicKey: key, validFor: () => true }),
  );
  const thresholds = { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0, tsaThreshold: 0 };
  new Verifier(trust, thresholds).verify(toSignedEntity(bundle));
  process.stdout.write('OK ' + json.dsseEnvelope.payload + '\n');
} catch (e) {
  process.stderr.write(`${e.code || e.name}: ${e.message}\n`);
  process.exit(1);
}
