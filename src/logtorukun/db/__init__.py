"""The server's database when it is not the default SQLite file: PostgreSQL, shared by
several web server instances (`[server] database = "postgresql://..."`)."""
