// knit-clb-sdkcheck: decodes knit's CLB request bodies into the official
// Tencent Cloud Go SDK's request types (see main.go).
module knit.dev/sdkcheck

go 1.22

require github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/clb v1.0.1000

require github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common v1.0.1000 // indirect
