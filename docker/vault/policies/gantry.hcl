# What api_server and mcp_gateway may read: their own secrets, nothing else.
path "secret/data/gantry" {
  capabilities = ["read"]
}

path "secret/data/database" {
  capabilities = ["read"]
}

# Upstream MCP server credentials referenced as vault:secret/data/mcp/<name>#<field>.
path "secret/data/mcp/*" {
  capabilities = ["read"]
}
