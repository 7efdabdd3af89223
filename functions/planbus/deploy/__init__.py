"""`planbus deploy`, the plan behind ./deploy.sh: the configuration read and checked once (`envfile`,
`infra`, `config`, `rules`, the request kinds of `kinds`), then every command in order (`plan`, with the
cloud steps in `cloud` and `schedules`, the database steps in `database`), shown and masked by `console`;
`upload` says what each function uploads."""
