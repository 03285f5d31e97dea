//! `shoal users`: named users with a role and several tokens each (admin).
//! `add NAME --role ROLE`, `ls`, `show NAME`, `set-role NAME ROLE`, `rm NAME`
//! (revokes the user's tokens). A user's tokens are made with
//! `shoal tokens create --user NAME [--scope function:resize-*]`.
//!
//! `--json` prints the API's answer.

use anyhow::Result;
use clap::Subcommand;

use shoal_client::Client;
use shoal_client::protocol::UserView;

use crate::output::{Out, time};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user with a role (reader, invoker, developer or admin): the
    /// highest any of its tokens may have.
    Add {
        name: String,
        #[arg(long)]
        role: String,
    },
    /// List users with their roles and how many tokens each has.
    Ls,
    /// Show a user and its tokens.
    Show { name: String },
    /// Change a user's role; its tokens act with at most the new one.
    SetRole { name: String, role: String },
    /// Remove a user and revoke all its tokens.
    Rm { name: String },
}

/// Runs `shoal users ...`.
pub async fn run(client: &Client, command: UsersCommand, json: bool) -> Result<()> {
    let out = Out { json };
    match command {
        UsersCommand::Add { name, role } => {
            let u = client.create_user(&name, &role).await?;
            out.print(&u, || {
                format!(
                    "Added user {} ({}). Make its tokens with `shoal tokens create --user {} --role ROLE`.",
                    u.name, u.role, u.name
                )
            });
        }
        UsersCommand::Ls => {
            let list = client.users().await?;
            out.print(&list, || {
                let mut s = format!(
                    "{:<24} {:<10} {:<6} {:<23}",
                    "NAME", "ROLE", "TOKENS", "CREATED"
                );
                for u in &list.users {
                    s += &format!(
                        "\n{:<24} {:<10} {:<6} {:<23}",
                        u.name,
                        u.role,
                        u.tokens.len(),
                        time(u.created_at_ms)
                    );
                }
                s
            });
        }
        UsersCommand::Show { name } => {
            let u = client.user(&name).await?;
            out.print(&u, || user_table(&u));
        }
        UsersCommand::SetRole { name, role } => {
            let u = client.set_user_role(&name, &role).await?;
            out.print(&u, || format!("User {} is now {}.", u.name, u.role));
        }
        UsersCommand::Rm { name } => {
            let d = client.delete_user(&name).await?;
            out.print(&d, || {
                format!(
                    "Removed user {name} and revoked {} token(s){}.",
                    d.revoked_tokens.len(),
                    if d.revoked_tokens.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", d.revoked_tokens.join(", "))
                    }
                )
            });
        }
    }
    Ok(())
}

/// The user, then a row per token: ID, ROLE, CREATED, NAME, SCOPES.
fn user_table(u: &UserView) -> String {
    let mut s = format!(
        "{} ({}), added {}\n{:<20} {:<10} {:<23}  {:<16} SCOPES",
        u.name,
        u.role,
        time(u.created_at_ms),
        "TOKEN",
        "ROLE",
        "CREATED",
        "NAME"
    );
    for t in &u.tokens {
        let mut scopes = t.scopes.clone();
        scopes.extend(t.channels.iter().map(|c| format!("channel:{c}")));
        s += &format!(
            "\n{:<20} {:<10} {:<23}  {:<16} {}",
            t.id,
            t.role,
            time(t.created_at_ms),
            t.name,
            if scopes.is_empty() {
                "-".to_string()
            } else {
                scopes.join(",")
            }
        );
    }
    s
}
