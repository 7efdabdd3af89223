"""The parts of ./deploy.sh that are better said in Python: checking the configuration before anything
touches the cloud (`config`), and pointing the database at the deployed functions (`database`)."""
