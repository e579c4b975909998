//! Berth's ingress data plane (pingora). It reads the discovery registry and never writes it.
