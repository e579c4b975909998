//! Integration tests of the node agent: its worker, the process runtime and the Docker runtime, in one test
//! binary. `rss` is ignored by default and meant to run alone (it reads this process's memory).

mod docker;
mod http;
mod logs_tls;
mod process;
mod rss;
mod worker;
