pub mod auth_nats;
