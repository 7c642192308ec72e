-- Run once by the postgres image on an empty data directory: one database for the gateway's
-- store (projection, outboxes, sessions, replay protection) and one the sandbox services share.
CREATE DATABASE posflow_gateway OWNER posflow;
CREATE DATABASE posflow_services OWNER posflow;
