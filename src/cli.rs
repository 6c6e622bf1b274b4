//! Command line: one binary, several roles.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gantry",
    version,
    about = "One secure, observable endpoint in front of many MCP servers"
)]
pub struct Cli {
    /// Configuration file (default: ./gantry.toml when present). Also GANTRY_CONFIG.
    #[arg(long, short, global = true, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// All-in-one on embedded defaults, with the built-in demo upstream when no server is
    /// configured (the default command)
    Serve(ServeArgs),
    /// The control plane alone: /api (tenants, users, API keys, status)
    Api(ServeArgs),
    /// The MCP data plane alone (production role; API keys from database.url or auth.api_keys)
    Gateway(ServeArgs),
    /// Serve one stdio MCP server over Streamable HTTP at /mcp, e.g.
    /// `gantry bridge --listen 0.0.0.0:8000 -- npx -y @modelcontextprotocol/server-github`
    Bridge(BridgeArgs),
    /// Apply database migrations, then exit (uses database.migrate_url when set)
    Migrate,
    /// Operator tasks without the API: the first administrator, tenants, API keys
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Exit 0 when the local instance is ready, 1 otherwise (for container healthchecks)
    Healthcheck {
        /// Address to probe (default: server.listen from configuration)
        #[arg(long)]
        addr: Option<String>,
    },
    /// Run the built-in demo MCP server on stdio (echo, add, time, key-value store)
    DemoUpstream {
        /// Serve over Streamable HTTP at http://ADDR/mcp instead of stdio
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
    /// Check the configuration and reach every dependency it names, one line per check;
    /// exits 1 when a check fails
    Doctor,
    /// Generate an API key and print it with the SHA-256 digest to put in auth.api_keys
    Keygen,
    /// Print the version and the MCP protocol versions spoken
    Version,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Listen address, overriding server.listen (e.g. 127.0.0.1:0 for a random port)
    #[arg(long)]
    pub listen: Option<String>,
    /// Write the bound address to this file once ready (for supervisors and tests)
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Name of the server (in logs and metrics); default: the command's file name
    #[arg(long)]
    pub name: Option<String>,
    /// Accept callers without an API key. Only for a private network that nothing
    /// untrusted can reach.
    #[arg(long)]
    pub no_auth: bool,
    /// The stdio server's command and arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Create a user (or reset an existing user's password) and make them a member of a
    /// tenant, which is created when missing. Prints a generated password unless
    /// --password-stdin is given.
    CreateUser {
        #[arg(long)]
        email: String,
        /// Tenant slug; created when it does not exist
        #[arg(long, default_value = "default")]
        tenant: String,
        /// owner, admin, member or viewer
        #[arg(long, default_value = "owner")]
        role: String,
        /// May manage every tenant and register stdio servers
        #[arg(long)]
        platform_admin: bool,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create an API key for a tenant and print it (once)
    CreateKey {
        /// Tenant slug
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Comma-separated: mcp, api
        #[arg(long, default_value = "mcp")]
        scopes: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List tenants
    ListTenants,
}
