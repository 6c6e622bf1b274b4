// Gantry's own MongoDB user: readWrite on the audit database and nothing else, so the
// services never hold the root credentials (those stay with backups and the exporter).
//
// The mongo image runs this with mongosh as the root user on the first start of an empty
// volume. It is idempotent, so an existing deployment can run it too (docs/operations.md):
//   docker compose exec mongodb sh -c 'mongosh --quiet -u "$MONGO_INITDB_ROOT_USERNAME" \
//     -p "$(cat /run/secrets/mongodb_password)" --authenticationDatabase admin \
//     /docker-entrypoint-initdb.d/10-gantry-audit-user.js'
const fs = require('fs');

// The database in the mongodb_url that vault/init.sh stores for the services.
const AUDIT_DATABASE = 'gantry_audit';
const user = process.env.MONGO_APP_USER || 'gantry_audit';
const passwordFile = process.env.MONGO_APP_PASSWORD_FILE || '/run/secrets/mongodb_app_password';
const pwd = fs.readFileSync(passwordFile, 'utf8').trim();
if (!pwd) {
  throw new Error(`${passwordFile} is empty: deploy.sh writes it from MONGO_APP_PASSWORD`);
}

const admin = db.getSiblingDB('admin');
const roles = [{ role: 'readWrite', db: AUDIT_DATABASE }];
if (admin.getUser(user)) {
  admin.updateUser(user, { pwd, roles });
  print(`gantry: MongoDB user ${user} updated (readWrite on ${AUDIT_DATABASE})`);
} else {
  admin.createUser({ user, pwd, roles });
  print(`gantry: MongoDB user ${user} created (readWrite on ${AUDIT_DATABASE})`);
}
