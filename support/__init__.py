"""The support console: why a follower could not sign in, without reading logs or calling DingTalk by hand."""
