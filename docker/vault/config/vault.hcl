# Vault server for the Gantry stack: integrated (raft) storage on the vault_data volume,
# one node (works on Vault and on OpenBao, which has no "file" storage), listening on
# the internal backend network only (no TLS there: nothing outside the stack can reach it;
# put a certificate here before exposing Vault beyond one host).
storage "raft" {
  path    = "/vault/file"
  node_id = "vault-1"
}

listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr     = "http://vault:8200"
cluster_addr = "http://vault:8201"
# Containers run without IPC_LOCK (every capability is dropped); with integrated storage
# Vault recommends this anyway. (OpenBao ignores the setting with a warning.)
disable_mlock = true
ui = false
