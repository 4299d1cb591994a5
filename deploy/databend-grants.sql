-- The privileges the rotator's Databend user (the one in DATABEND_DSN) needs, as a role.
-- Replace sales / ops with the databases your bindings select. Written for Databend's RBAC
-- (1.2.7xx and later); databend-local has no RBAC, so CI does not run these statements.
CREATE ROLE IF NOT EXISTS rotator;

-- see which objects show which credentials
GRANT SELECT ON system.* TO ROLE rotator;
-- make connections from each new secret version, and drop the rotator's old ones
GRANT CREATE CONNECTION ON *.* TO ROLE rotator;
-- (with enable_experimental_connection_privilege_check: ACCESS CONNECTION on each connection
-- the rotator makes; it owns them, having created them)
-- the pre-flight lists each bucket through a throwaway stage on an empty prefix
GRANT CREATE STAGE ON *.* TO ROLE rotator;
-- switch the bound tables (ALTER TABLE ... CONNECTION) and read them back
GRANT ALTER, SELECT ON sales.* TO ROLE rotator;
GRANT ALTER, SELECT ON ops.* TO ROLE rotator;
-- the audit trail: an append-only table, database ROTATOR_AUDIT_DATABASE (default rotator).
-- Create the database as an administrator; the role may create the table in it and append,
-- never UPDATE or DELETE.
CREATE DATABASE IF NOT EXISTS rotator;
GRANT CREATE, INSERT, SELECT ON rotator.* TO ROLE rotator;

CREATE USER IF NOT EXISTS rotator IDENTIFIED BY '<a generated password>' WITH DEFAULT_ROLE = 'rotator';
GRANT ROLE rotator TO rotator;
